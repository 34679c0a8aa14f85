//! `Globals` merged into resources the way the SAM translator does it: maps merge key by
//! key (the resource wins), lists concatenate (Globals first), anything else — including an
//! intrinsic function, which counts as a single value — is replaced by the resource's value.

use crate::yaml::{Node, Value};
use crate::Error;

/// Properties of `Globals.Function` that SAM accepts.
pub(crate) const FUNCTION_GLOBALS: &[&str] = &[
    "Handler",
    "Runtime",
    "CodeUri",
    "DeadLetterQueue",
    "Description",
    "MemorySize",
    "Timeout",
    "VpcConfig",
    "Environment",
    "Tags",
    "PropagateTags",
    "Tracing",
    "KmsKeyArn",
    "Layers",
    "AutoPublishAlias",
    "AutoPublishAliasAllProperties",
    "DeploymentPreference",
    "PermissionsBoundary",
    "ReservedConcurrentExecutions",
    "ProvisionedConcurrencyConfig",
    "AssumeRolePolicyDocument",
    "EventInvokeConfig",
    "Architectures",
    "EphemeralStorage",
    "SnapStart",
    "FunctionUrlConfig",
    "RuntimeManagementConfig",
    "LoggingConfig",
    "RecursiveLoop",
    "SourceKMSKeyArn",
    "CapacityProviderConfig",
    "FunctionScalingConfig",
];

/// Properties of `Globals.SimpleTable` that SAM accepts.
pub(crate) const SIMPLE_TABLE_GLOBALS: &[&str] = &["SSESpecification"];

/// Checks a `Globals` section's keys against what SAM accepts.
pub(crate) fn validate(section: &str, node: &Node, allowed: &[&str]) -> Result<(), Error> {
    let map = node.as_map().ok_or_else(|| {
        Error::invalid(
            "Globals",
            section,
            node.line,
            format!("must be a map, found {}", node.type_name()),
        )
    })?;
    for (k, v) in map {
        if !allowed.contains(&k.as_str()) {
            return Err(Error::invalid(
                "Globals",
                &format!("{section}.{k}"),
                v.line,
                format!("`{k}` is not supported in Globals.{section}"),
            ));
        }
    }
    Ok(())
}

/// Merges global properties `g` under local properties `l`.
pub(crate) fn merge(g: &Node, l: &Node) -> Node {
    let plain_map = |n: &Node| matches!(n.value, Value::Map(_)) && n.intrinsic().is_none();
    match (&g.value, &l.value) {
        (Value::Map(gm), Value::Map(lm)) if plain_map(g) && plain_map(l) => {
            let mut out: Vec<(String, Node)> = Vec::with_capacity(gm.len() + lm.len());
            for (k, gv) in gm {
                match lm.iter().find(|(lk, _)| lk == k) {
                    Some((_, lv)) => out.push((k.clone(), merge(gv, lv))),
                    None => out.push((k.clone(), gv.clone())),
                }
            }
            for (k, lv) in lm {
                if !gm.iter().any(|(gk, _)| gk == k) {
                    out.push((k.clone(), lv.clone()));
                }
            }
            Node::new(Value::Map(out), l.line)
        }
        (Value::Seq(gs), Value::Seq(ls)) => {
            let mut out = gs.clone();
            out.extend(ls.iter().cloned());
            Node::new(Value::Seq(out), l.line)
        }
        _ => l.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse;

    #[test]
    fn sam_merge_rules() {
        let g = parse("Timeout: 10\nLayers: [A]\nEnvironment:\n  Variables: {X: '1', Y: '2'}\nTracing: !Ref T\n").unwrap();
        let l = parse(
            "Timeout: 20\nLayers: [B]\nEnvironment:\n  Variables: {Y: '3'}\nTracing: Active\n",
        )
        .unwrap();
        let m = merge(&g, &l).to_json();
        assert_eq!(
            m,
            serde_json::json!({"Timeout": 20, "Layers": ["A", "B"],
                "Environment": {"Variables": {"X": "1", "Y": "3"}}, "Tracing": "Active"})
        );
    }
}
