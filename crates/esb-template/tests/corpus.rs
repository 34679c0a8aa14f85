//! Parser tests over a corpus of SAM templates: each `tests/corpus/<name>/` holds a template
//! (`template.yaml` or `template.json`), an optional `generator.yml`, and `expected.json`,
//! the expected model. The model is compared with it field by field, and every difference
//! is reported with its path (`functions[1].environment.TABLE_NAME: expected …, got …`).

use std::path::{Path, PathBuf};

use serde_json::Value;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn template_file(dir: &Path) -> PathBuf {
    ["template.yaml", "template.yml", "template.json"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{} holds no template", dir.display()))
}

/// Loads a corpus template the way `esb build` does: generator.yml parameters first.
pub fn load_case(dir: &Path) -> esb_template::Template {
    let gen = dir.join("generator.yml");
    let overrides = if gen.exists() {
        esb_template::load_generator(&gen).expect("generator.yml")
    } else {
        esb_template::Overrides::default()
    };
    esb_template::load(&template_file(dir), &overrides)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn diff(path: &str, expected: &Value, got: &Value, out: &mut Vec<String>) {
    match (expected, got) {
        (Value::Object(e), Value::Object(g)) => {
            for (k, ev) in e {
                let p = format!("{path}.{k}");
                match g.get(k) {
                    Some(gv) => diff(&p, ev, gv, out),
                    None if ev.is_null() => {}
                    None => out.push(format!("{p}: expected {ev}, missing")),
                }
            }
            for (k, gv) in g {
                if !e.contains_key(k) && !gv.is_null() {
                    out.push(format!("{path}.{k}: unexpected {gv}"));
                }
            }
        }
        (Value::Array(e), Value::Array(g)) => {
            for (i, (ev, gv)) in e.iter().zip(g).enumerate() {
                diff(&format!("{path}[{i}]"), ev, gv, out);
            }
            if e.len() != g.len() {
                out.push(format!(
                    "{path}: expected {} items, got {}",
                    e.len(),
                    g.len()
                ));
            }
        }
        _ if expected != got => out.push(format!("{path}: expected {expected}, got {got}")),
        _ => {}
    }
}

#[test]
fn corpus_matches_expected_models() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 5, "the corpus shrank");
    let mut failures = Vec::new();
    for dir in &cases {
        let model = serde_json::to_value(load_case(dir)).unwrap();
        let expected_path = dir.join("expected.json");
        if std::env::var_os("ESB_BLESS").is_some() {
            std::fs::write(
                &expected_path,
                serde_json::to_string_pretty(&model).unwrap() + "\n",
            )
            .unwrap();
            continue;
        }
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(&expected_path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        diff(&name, &expected, &model, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "model differs from expected:\n{}",
        failures.join("\n")
    );
}

#[test]
fn code_paths_resolve_against_the_template_directory() {
    let dir = corpus_dir().join("orders-api");
    let t = load_case(&dir);
    let f = t.function("CreateOrderFunction").unwrap();
    match &f.code {
        esb_template::Code::Dir { path, .. } => {
            assert!(path.is_absolute());
            assert!(
                path.ends_with("orders-api/functions/create_order"),
                "{}",
                path.display()
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(f.line > 0);
}

#[test]
fn command_line_overrides_win_over_generator() {
    let dir = corpus_dir().join("orders-api");
    let gen = esb_template::load_generator(&dir.join("generator.yml")).unwrap();
    let cli = esb_template::Overrides {
        parameters: esb_template::parse_parameter_overrides("Stage=dev Unused=1").unwrap(),
        ..Default::default()
    };
    let t = esb_template::load(&dir.join("template.yaml"), &gen.merge(cli)).unwrap();
    assert_eq!(t.parameters["Stage"], "dev");
    assert_eq!(t.tables[0].name, "orders-dev-v2");
    assert!(
        t.warnings.iter().any(|w| w.contains("Unused")),
        "{:?}",
        t.warnings
    );
}

#[test]
fn init_helpers_round_trip_through_generator_yml() {
    let dir = corpus_dir().join("conditions-mappings");
    let specs = esb_template::parameter_specs(&dir.join("template.yaml")).unwrap();
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["Env", "EnableReports", "Subnets", "WorkerMemory"]);
    assert_eq!(specs[0].allowed_values, ["staging", "production"]);
    assert_eq!(specs[2].param_type, "CommaDelimitedList");
    assert_eq!(specs[3].default.as_deref(), Some("384"));

    // Defaults (what a non-interactive `esb init` writes), one changed, read back.
    let mut values: indexmap::IndexMap<String, String> = specs
        .iter()
        .map(|s| (s.name.clone(), s.default.clone().unwrap_or_default()))
        .collect();
    values.insert("Env".into(), "production".into());
    let text = esb_template::render_generator("my-app", &values);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("generator.yml"), &text).unwrap();
    let o = esb_template::load_generator(&tmp.path().join("generator.yml")).unwrap();
    assert_eq!(o.stack_name.as_deref(), Some("my-app"));
    assert_eq!(o.parameters, values);
    let t = esb_template::load(&dir.join("template.yaml"), &o).unwrap();
    assert_eq!(t.functions[0].name, "acme-ingest-production");
    assert!(t.buckets.iter().any(|b| b.name == "data-production"));
}
