//! IAM policy documents and their evaluation.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;

/// Allow or Deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// Grants.
    Allow,
    /// Refuses, whatever else grants.
    Deny,
}

/// One statement: an effect on actions (or all but `not_actions`) and resources (or all but
/// `not_resources`). Patterns use `*` and `?`; actions match case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// Allow or Deny.
    pub effect: Effect,
    /// `Action` patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    /// `NotAction` patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_actions: Vec<String>,
    /// `Resource` patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// `NotResource` patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_resources: Vec<String>,
}

/// The statements that apply to one principal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Every statement of every policy of the principal.
    pub statements: Vec<Statement>,
}

/// The outcome of an evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every resource is allowed.
    Allow,
    /// This resource is not allowed by any statement.
    ImplicitDeny(String),
    /// A Deny statement matches this resource.
    ExplicitDeny(String),
}

/// `*` (any run) and `?` (one byte) matching, over bytes (ARNs and actions are ASCII);
/// `fold_case` compares ASCII letters without case. No allocation.
fn glob(pattern: &str, text: &str, fold_case: bool) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let eq = |a: u8, b: u8| {
        if fold_case {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    // Iterative matching with one backtrack point (linear in practice).
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || eq(p[pi], t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

impl Statement {
    fn matches_action(&self, action: &str) -> bool {
        if !self.actions.is_empty() {
            self.actions.iter().any(|a| glob(a, action, true))
        } else {
            !self.not_actions.iter().any(|a| glob(a, action, true))
        }
    }

    fn matches_resource(&self, resource: &str) -> bool {
        if !self.resources.is_empty() {
            self.resources.iter().any(|r| glob(r, resource, false))
        } else {
            !self.not_resources.iter().any(|r| glob(r, resource, false))
        }
    }

    fn matches(&self, action: &str, resource: &str) -> bool {
        self.matches_action(action) && self.matches_resource(resource)
    }
}

impl Policy {
    /// Evaluates `action` on every resource: an explicit Deny on any resource wins, then a
    /// resource no Allow covers denies.
    pub fn evaluate(&self, action: &str, resources: &[String]) -> Decision {
        for r in resources {
            if self
                .statements
                .iter()
                .any(|s| s.effect == Effect::Deny && s.matches(action, r))
            {
                return Decision::ExplicitDeny(r.clone());
            }
        }
        for r in resources {
            if !self
                .statements
                .iter()
                .any(|s| s.effect == Effect::Allow && s.matches(action, r))
            {
                return Decision::ImplicitDeny(r.clone());
            }
        }
        Decision::Allow
    }

    /// Parses an IAM policy document (`{"Version": …, "Statement": [...]}`, or one
    /// statement object) and appends its statements. `what` names it in errors. Statements
    /// with a `Condition` cannot be evaluated here and are skipped; their description is
    /// returned as a warning.
    pub fn add_document(&mut self, doc: &Value, what: &str) -> Result<Vec<String>, Error> {
        let statements = match doc.get("Statement") {
            Some(Value::Array(items)) => items.clone(),
            Some(one @ Value::Object(_)) => vec![one.clone()],
            Some(other) => {
                return Err(Error::Policy(format!(
                    "{what}: Statement must be a list or a map, found {other}"
                )))
            }
            None if doc.get("Effect").is_some() => vec![doc.clone()],
            None => {
                return Err(Error::Policy(format!(
                    "{what}: a policy document needs a Statement"
                )))
            }
        };
        let mut warnings = Vec::new();
        for (i, s) in statements.iter().enumerate() {
            let at = format!("{what} Statement[{i}]");
            let effect = match s.get("Effect").and_then(Value::as_str) {
                Some("Allow") => Effect::Allow,
                Some("Deny") => Effect::Deny,
                other => {
                    return Err(Error::Policy(format!(
                        "{at}: Effect must be Allow or Deny, found {other:?}"
                    )))
                }
            };
            if s.get("Condition").is_some() {
                warnings.push(format!(
                    "{at}: Condition is not evaluated by esb; the statement is ignored"
                ));
                continue;
            }
            let list = |key: &str| -> Result<Vec<String>, Error> {
                match s.get(key) {
                    None => Ok(Vec::new()),
                    Some(Value::String(x)) => Ok(vec![x.clone()]),
                    Some(Value::Array(items)) => items
                        .iter()
                        .map(|v| {
                            v.as_str().map(str::to_string).ok_or_else(|| {
                                Error::Policy(format!("{at}: {key} items must be strings"))
                            })
                        })
                        .collect(),
                    Some(_) => Err(Error::Policy(format!(
                        "{at}: {key} must be a string or a list of strings"
                    ))),
                }
            };
            let st = Statement {
                effect,
                actions: list("Action")?,
                not_actions: list("NotAction")?,
                resources: list("Resource")?,
                not_resources: list("NotResource")?,
            };
            if st.actions.is_empty() == st.not_actions.is_empty() {
                return Err(Error::Policy(format!(
                    "{at}: exactly one of Action and NotAction is needed"
                )));
            }
            if st.resources.is_empty() == st.not_resources.is_empty() {
                return Err(Error::Policy(format!(
                    "{at}: exactly one of Resource and NotResource is needed"
                )));
            }
            self.statements.push(st);
        }
        Ok(warnings)
    }

    /// Adds an Allow of `actions` on `resources`.
    pub fn allow(&mut self, actions: &[&str], resources: Vec<String>) {
        self.statements.push(Statement {
            effect: Effect::Allow,
            actions: actions.iter().map(|a| a.to_string()).collect(),
            not_actions: Vec::new(),
            resources,
            not_resources: Vec::new(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs() {
        assert!(glob("s3:Get*", "s3:GetObject", true));
        assert!(glob("S3:get*", "s3:GetObject", true));
        assert!(!glob("s3:Get*", "s3:PutObject", true));
        assert!(glob("arn:aws:s3:::b/*", "arn:aws:s3:::b/a/b/c", false));
        assert!(!glob("arn:aws:s3:::b/*", "arn:aws:s3:::B/x", false));
        assert!(glob("a?c", "abc", false));
        assert!(glob("*", "", false));
        assert!(glob("a*b*c", "axxbyyc", false));
        assert!(!glob("a*b*c", "axxbyy", false));
    }

    #[test]
    fn explicit_deny_wins_and_no_allow_denies() {
        let mut p = Policy::default();
        p.add_document(
            &json!({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "dynamodb:*", "Resource": "arn:aws:dynamodb:r:a:table/*"},
                {"Effect": "Deny", "Action": ["dynamodb:DeleteItem"], "Resource": "arn:aws:dynamodb:r:a:table/keep"}
            ]}),
            "f",
        )
        .unwrap();
        let t = |n: &str| vec![format!("arn:aws:dynamodb:r:a:table/{n}")];
        assert_eq!(p.evaluate("dynamodb:GetItem", &t("keep")), Decision::Allow);
        assert!(matches!(
            p.evaluate("dynamodb:DeleteItem", &t("keep")),
            Decision::ExplicitDeny(_)
        ));
        assert_eq!(
            p.evaluate("dynamodb:DeleteItem", &t("other")),
            Decision::Allow
        );
        assert!(matches!(
            p.evaluate("s3:GetObject", &["arn:aws:s3:::b/k".into()]),
            Decision::ImplicitDeny(_)
        ));
        // Every resource must be allowed.
        let mut two = t("keep");
        two.push("arn:aws:s3:::b".into());
        assert!(matches!(
            p.evaluate("dynamodb:GetItem", &two),
            Decision::ImplicitDeny(r) if r == "arn:aws:s3:::b"
        ));
    }

    #[test]
    fn not_action_and_bad_documents() {
        let mut p = Policy::default();
        p.add_document(
            &json!({"Effect": "Allow", "NotAction": "s3:Delete*", "Resource": "*"}),
            "f",
        )
        .unwrap();
        assert_eq!(p.evaluate("s3:GetObject", &["x".into()]), Decision::Allow);
        assert!(matches!(
            p.evaluate("s3:DeleteObject", &["x".into()]),
            Decision::ImplicitDeny(_)
        ));
        let w = p
            .add_document(
                &json!({"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {}}]}),
                "f",
            )
            .unwrap();
        assert_eq!(w.len(), 1);
        assert!(p
            .add_document(
                &json!({"Statement": [{"Effect": "Maybe", "Action": "*", "Resource": "*"}]}),
                "f"
            )
            .is_err());
        assert!(p
            .add_document(
                &json!({"Statement": [{"Effect": "Allow", "Resource": "*"}]}),
                "f"
            )
            .is_err());
        assert!(p.add_document(&json!({"Version": "x"}), "f").is_err());
    }
}
