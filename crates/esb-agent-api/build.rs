fn main() {
    println!("cargo:rerun-if-changed=proto/esb/agent/v1/agent.proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/esb/agent/v1/agent.proto"], &["proto"])
        .unwrap_or_else(|e| {
            panic!("compile agent.proto (needs protoc: Debian's protobuf-compiler): {e}")
        });
}
