//! CloudWatch Logs filter patterns for unstructured events: the subset esb understands.
//!
//! `ERROR` (the term must appear), `"cannot open"` (the phrase must appear), `?ERROR ?WARN`
//! (at least one of the `?` terms), `-DEBUG` (must not appear); terms combine with AND, are
//! case-sensitive and match anywhere in the message, as on AWS. An empty pattern matches
//! every event. JSON (`{ $.level = ... }`), space-delimited (`[ip, user, ...]`) and regular
//! expression (`%...%`) patterns are refused.

/// A parsed filter pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Pattern {
    /// Terms that must all appear.
    all: Vec<String>,
    /// Terms of which one must appear (when there are any).
    any: Vec<String>,
    /// Terms that must not appear.
    none: Vec<String>,
}

/// Why a pattern was refused (the message of the `InvalidParameterException`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid filter pattern: {0}")]
pub(crate) struct PatternError(String);

impl Pattern {
    /// Parses `pattern`.
    pub(crate) fn parse(pattern: &str) -> Result<Pattern, PatternError> {
        let mut out = Pattern::default();
        let p = pattern.trim();
        if p.starts_with('{') || p.starts_with('[') || p.starts_with('%') {
            return Err(PatternError(format!(
                "{pattern:?}: only terms, \"quoted phrases\", ?term and -term are supported here \
                 (not JSON, space-delimited or regular expression patterns)"
            )));
        }
        let mut chars = p.chars().peekable();
        loop {
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            let Some(&first) = chars.peek() else { break };
            let kind = match first {
                '?' | '-' => {
                    chars.next();
                    first
                }
                _ => ' ',
            };
            let mut term = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                term.push(n);
                            }
                        }
                        '"' => {
                            closed = true;
                            break;
                        }
                        c => term.push(c),
                    }
                }
                if !closed {
                    return Err(PatternError(format!("{pattern:?}: unterminated quote")));
                }
            } else {
                while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                    term.push(c);
                }
            }
            if term.is_empty() {
                continue;
            }
            match kind {
                '?' => out.any.push(term),
                '-' => out.none.push(term),
                _ => out.all.push(term),
            }
        }
        Ok(out)
    }

    /// Whether the pattern matches every event.
    pub(crate) fn is_all(&self) -> bool {
        self.all.is_empty() && self.any.is_empty() && self.none.is_empty()
    }

    /// Whether `message` matches.
    pub(crate) fn matches(&self, message: &str) -> bool {
        self.all.iter().all(|t| message.contains(t.as_str()))
            && !self.none.iter().any(|t| message.contains(t.as_str()))
            && (self.any.is_empty() || self.any.iter().any(|t| message.contains(t.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, msg: &str) -> bool {
        Pattern::parse(p).unwrap().matches(msg)
    }

    #[test]
    fn terms_phrases_options_and_exclusions() {
        assert!(m("", "anything"));
        assert!(Pattern::parse("  ").unwrap().is_all());
        assert!(m("ERROR", "[ERROR] disk full"));
        assert!(!m("ERROR", "[error] disk full"), "case-sensitive");
        assert!(m("ERROR disk", "[ERROR] disk full"));
        assert!(!m("ERROR memory", "[ERROR] disk full"));
        assert!(m("\"disk full\"", "[ERROR] disk full"));
        assert!(!m("\"full disk\"", "[ERROR] disk full"));
        assert!(m("?ERROR ?WARN", "WARN low"));
        assert!(!m("?ERROR ?WARN", "INFO ok"));
        assert!(m("disk -WARN", "ERROR disk"));
        assert!(!m("disk -WARN", "WARN disk"));
        assert!(m("-\"disk full\"", "disk empty"));
        assert!(m(r#""say \"hi\"""#, r#"they say "hi" there"#));
    }

    #[test]
    fn unsupported_patterns_are_refused() {
        for p in ["{ $.level = \"ERROR\" }", "[ip, user]", "%ERR.*%", "\"open"] {
            assert!(Pattern::parse(p).is_err(), "{p}");
        }
    }
}
