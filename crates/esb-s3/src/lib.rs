//! esb-s3 (skeleton; being built).
