//! Generates the Echo service for Volo (volo-build, pure-Rust parser) and for
//! tonic (tonic-prost-build, with the protoc shipped by protoc-bin-vendored so
//! no system protoc is needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/echo.proto");

    volo_build::Builder::protobuf()
        .add_service("proto/echo.proto")
        .include_dirs(vec!["proto".into()])
        .filename("volo_gen.rs".into())
        .write()?;

    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/echo.proto"], &["proto"])?;
    Ok(())
}
