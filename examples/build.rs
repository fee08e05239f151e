//! Generates the Echo service for Volo gRPC and Volo Thrift (volo-build,
//! pure-Rust parsers) and for tonic (tonic-prost-build, with the protoc shipped by protoc-bin-vendored so
//! no system protoc is needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/echo.proto");
    println!("cargo:rerun-if-changed=idl/echo.thrift");

    volo_build::Builder::thrift()
        .add_service("idl/echo.thrift")
        .filename("volo_thrift_gen.rs".into())
        .write()?;

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
