//! esb-netns (skeleton; being built).
