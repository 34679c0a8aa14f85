//! esb-template (skeleton; being built).
