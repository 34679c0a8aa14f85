//! What a build of the box makes: the template loaded (with generator.yml and overrides),
//! images built, pushed to the box's registry and imported into the local containerd,
//! the revisions file the gateway serves from, tables and buckets provisioned; and the
//! registry's upkeep (offline garbage collection, pruning of revisions no longer built).

use std::path::Path;
use std::sync::Arc;

use crate::control::{dial_addr, Plan};
use crate::layout::revisions_file;
use crate::provision;
use crate::{Result, ResultExt};

/// Loads the template with generator.yml (beside it) and command-line overrides.
pub fn load_template(path: &Path, overrides: Option<&str>) -> Result<esb_template::Template> {
    let generator = path.with_file_name("generator.yml");
    let mut o = if generator.exists() {
        esb_template::load_generator(&generator)?
    } else {
        esb_template::Overrides::default()
    };
    if let Some(text) = overrides {
        let params = esb_template::parse_parameter_overrides(text)?;
        o = o.merge(esb_template::Overrides {
            parameters: params,
            ..Default::default()
        });
    }
    Ok(esb_template::load(path, &o)?)
}

/// Writes the registry's configuration and collects what deleted revisions left (the
/// registry is not running yet: distribution collects only offline).
pub async fn prepare_registry(plan: &Plan) -> Result<()> {
    let server = plan.registry();
    server.write()?;
    let has_data = std::fs::read_dir(server.data_dir())
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if has_data {
        let program = plan.registry_program.clone();
        let summary =
            tokio::task::spawn_blocking(move || server.garbage_collect(&program)).await??;
        tracing::info!("registry garbage collection: {summary}");
    }
    Ok(())
}

/// Deletes from the registry every function image that is not the current revision of a
/// function (`revisions`: function name -> manifest digest); its blobs go at the
/// registry's next start. Failures are logged: they cost disk, not service. Without a
/// readable revisions file nothing is deleted (nothing can be proven unused then).
pub async fn prune_registry(
    plan: &Plan,
    revisions: Option<&serde_json::Map<String, serde_json::Value>>,
) {
    let Some(revisions) = revisions else {
        tracing::warn!(
            "registry prune skipped: {} is missing or unreadable",
            revisions_file(&plan.state).display()
        );
        return;
    };
    let registry = plan.registry_client();
    let wanted: std::collections::HashMap<String, String> = revisions
        .iter()
        .filter_map(|(f, d)| {
            Some((
                esb_registry::function_repository(f),
                d.as_str()?.to_string(),
            ))
        })
        .collect();
    let repos = match esb_image::catalog(&registry).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("registry prune: {e}");
            return;
        }
    };
    let prefix = esb_registry::function_repository("x");
    let prefix = prefix.trim_end_matches('x');
    for repo in repos.iter().filter(|r| r.starts_with(prefix)) {
        let tagged = match esb_image::tagged_digests(&registry, repo).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("registry prune {repo}: {e}");
                continue;
            }
        };
        let mut seen = std::collections::HashSet::new();
        for (_, digest) in tagged {
            if wanted.get(repo) == Some(&digest) || !seen.insert(digest.clone()) {
                continue;
            }
            match esb_image::delete_manifest(&registry, repo, &digest).await {
                Ok(()) => tracing::info!("registry: deleted {repo}@{digest} (no longer built)"),
                Err(e) => tracing::warn!("registry prune: {e}"),
            }
        }
    }
}

/// The revisions file's content (`None` when it is missing or unreadable).
pub fn read_revisions(state: &Path) -> Option<serde_json::Map<String, serde_json::Value>> {
    std::fs::read(revisions_file(state))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Where a build tells what the user should know (each warning is also logged).
pub type Warn = Arc<dyn Fn(String) + Send + Sync>;

/// Builds the images, imports them into containerd, writes the revisions file and
/// provisions tables and buckets. Returns a summary for `box.json`. Warnings (the
/// template's, a runtime served by another interpreter version, a function left out,
/// drift of a provisioned resource) go to `warn` as they are found; each error names its
/// step ("build the images", "provision tables and buckets", …).
pub async fn build_and_provision(plan: &Plan, warn: Warn) -> Result<serde_json::Value> {
    let p = plan.clone();
    let w = warn.clone();
    let (template, report) = tokio::task::spawn_blocking(move || -> Result<_> {
        let template = load_template(&p.template, p.parameter_overrides.as_deref())
            .step("load the template")?;
        for t in &template.warnings {
            w(format!("template: {t}"));
        }
        let mut opts = esb_image::BuildOptions::new(&template, p.supervisor.clone());
        opts.out_dir = p.build_dir();
        opts.no_cache = p.rebuild;
        let progress = |e: &esb_image::Progress| {
            use esb_image::Progress::*;
            match e {
                Planned { images, layers } => {
                    tracing::info!("building {images} image(s), {layers} layer(s)")
                }
                Base(line) => tracing::info!("base image: {line}"),
                Layer {
                    what,
                    size,
                    cached: false,
                    ..
                } => tracing::info!("built layer {what} ({size} bytes)"),
                Image {
                    function,
                    reference,
                    changed,
                    ..
                } => tracing::info!(
                    "image {function}: {reference}{}",
                    if *changed { "" } else { " (unchanged)" }
                ),
                Skipped { function, reason } => w(format!("skipped {function}: {reason}")),
                Warning(text) => w(text.clone()),
                _ => {}
            }
        };
        let report = esb_image::build(&template, &opts, &progress).step("build the images")?;
        Ok((template, report))
    })
    .await??;
    // Every image goes to the box's registry (compute nodes pull from there), named by
    // function and revision; the local containerd gets them directly unless the box was
    // asked to pull like a compute node.
    let registry = plan.registry_client();
    let mut pushed = Vec::new();
    let mut named = Vec::new();
    let mut revisions = serde_json::Map::new();
    let mut repos: Vec<String> = Vec::new();
    for i in &report.images {
        let Some(f) = template.function(&i.function) else {
            continue;
        };
        let repo = esb_registry::function_repository(&f.name);
        let tag = esb_registry::revision_tag(&i.manifest_digest);
        let layout = esb_image::Layout::open(&report.layout)
            .with_step(|| format!("open the built images ({})", report.layout.display()))?;
        let r = esb_image::push_mounting(&layout, &i.reference, &registry, &repo, &tag, &repos)
            .await
            .with_step(|| format!("push {} to the box's registry", f.name))?;
        repos.push(repo);
        if r.manifest_pushed {
            tracing::info!(
                "pushed {}: {} layer(s) sent, {} blob(s) present",
                r.reference,
                r.layers_uploaded,
                r.blobs_present
            );
        }
        pushed.push(serde_json::json!({
            "function": f.name, "reference": r.reference,
            "layers_uploaded": r.layers_uploaded, "blobs_uploaded": r.blobs_uploaded,
            "manifest_pushed": r.manifest_pushed}));
        named.push((
            i.reference.clone(),
            esb_registry::image_reference(esb_registry::CONTROL_HOST, &f.name, &i.manifest_digest),
        ));
        revisions.insert(f.name.clone(), i.manifest_digest.clone().into());
    }
    if !plan.pull_images {
        let socket = plan.containerd_dir().join("containerd.sock");
        esb_image::import_named(&report.layout, &named, &socket)
            .await
            .step("import the images into containerd")?;
    }
    // Keys first: the gateway reads them when it learns of the new revisions.
    crate::iam::issue(
        &plan.state,
        &template,
        &revisions,
        plan.iam_mode,
        &plan.region,
        &plan.account_id,
        &warn,
    )
    .step("issue the functions' credentials")?;
    let path = revisions_file(&plan.state);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&revisions)?)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| crate::Error::file("write", &path, e))?;
    let s3 = dial_addr(plan.s3).to_string();
    let ddb = dial_addr(plan.dynamodb).to_string();
    let prov = provision::provision(
        &template,
        &provision::Target {
            dynamodb: &ddb,
            s3: &s3,
            creds: (&plan.creds.0, &plan.creds.1),
            region: &plan.region,
        },
    )
    .await
    .step("provision tables and buckets")?;
    for c in &prov.created {
        tracing::info!("created {c}");
    }
    for d in &prov.drift {
        warn(format!("drift: {d}"));
    }
    Ok(serde_json::json!({
        "ok": true,
        "images": report.images.iter().map(|i| serde_json::json!({
            "function": i.function, "reference": i.reference,
            "digest": i.manifest_digest, "changed": i.changed})).collect::<Vec<_>>(),
        "layers_built": report.layers_built,
        "pushed": pushed,
        "layers_cached": report.layers_cached,
        "warnings": report.warnings,
        "provisioned": prov,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_reach_the_template_and_errors_name_the_parameter() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("template.yaml");
        std::fs::write(
            &t,
            "Parameters:\n  Stage:\n    Type: String\n    Default: dev\nResources:\n  B:\n    Type: AWS::S3::Bucket\n    Properties:\n      BucketName: !Sub 'b-${Stage}'\n",
        )
        .unwrap();
        let tpl = load_template(&t, Some("Stage=prod")).unwrap();
        assert_eq!(tpl.buckets[0].name, "b-prod");
        let tpl = load_template(&t, None).unwrap();
        assert_eq!(tpl.buckets[0].name, "b-dev");
        std::fs::write(
            &t,
            "Resources:\n  B:\n    Type: AWS::S3::Bucket\n    Properties:\n      BucketName: !Ref NoSuchThing\n",
        )
        .unwrap();
        let e = load_template(&t, None).unwrap_err();
        assert!(e.to_string().contains("NoSuchThing"), "{e}");
    }
}
