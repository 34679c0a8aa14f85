//! esb-image (skeleton; being built).
