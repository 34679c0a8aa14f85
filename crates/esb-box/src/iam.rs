//! Per-function credentials: after every build the box gives each function revision a key
//! pair of its own, bound to the policy its template gives it (`esb-iam`), in
//! `STATE/iam/credentials.json`; the gateway hands each function its key, and S3,
//! DynamoDB and the Invoke API evaluate the policy on every request.

use std::path::Path;
use std::time::Duration;

use crate::error::Result;
use crate::images::Warn;

/// How long the key of a replaced revision stays valid (its workers drain meanwhile).
pub const REPLACED_KEY_GRACE: Duration = Duration::from_secs(15 * 60);

/// Writes the credentials of every function of `template` with its revision from
/// `revisions`. A policy that cannot be read fails (naming the function and item); a
/// function without any policy, and policy items that grant nothing here, are warned about.
pub fn issue(
    state: &Path,
    template: &esb_template::Template,
    revisions: &serde_json::Map<String, serde_json::Value>,
    mode: esb_iam::Mode,
    region: &str,
    account: &str,
    warn: &Warn,
) -> Result<()> {
    let cx = esb_iam::sam::ArnContext {
        region: region.to_string(),
        account: account.to_string(),
    };
    let mut grants = Vec::new();
    let mut without = Vec::new();
    for f in &template.functions {
        let items = f.policies.clone().unwrap_or_default();
        let fp = esb_iam::sam::function_policy(&f.name, &items, &cx)?;
        for w in &fp.warnings {
            warn(format!("permissions: {w}"));
        }
        if f.policies.is_none() {
            without.push(f.name.clone());
        }
        grants.push(esb_iam::store::FunctionGrant {
            function: f.name.clone(),
            revision: revisions
                .get(&f.name)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string(),
            has_policy: f.policies.is_some(),
            policy: fp.policy,
        });
    }
    if !without.is_empty() && mode != esb_iam::Mode::Off {
        warn(format!(
            "permissions: no Policies or Role for {} (ESB_IAM={mode}: {})",
            without.join(", "),
            if mode == esb_iam::Mode::Enforce {
                "their calls to S3, DynamoDB and the Invoke API are denied; give them Policies, or run with ESB_IAM=warn while you write them"
            } else {
                "their calls pass and each would-be denial is logged"
            }
        ));
    }
    esb_iam::store::issue(
        &crate::layout::iam_file(state),
        &grants,
        mode,
        account,
        REPLACED_KEY_GRACE,
    )?;
    Ok(())
}
