//! esb-dynamodb (skeleton; being built).
