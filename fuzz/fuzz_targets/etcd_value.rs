//! Values read from etcd under the registry's prefix.
//!
//! Properties: nothing panics; junk is a typed `Error::Decode`; what decodes
//! encodes back to a value that decodes to the same instance.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rpc_ext_registry::{
    etcd::{decode_instance, encode_instance},
    Error,
};

fuzz_target!(|data: &[u8]| {
    match decode_instance("/registry-ext/fuzz/key", data) {
        Ok(instance) => {
            let again = decode_instance("/registry-ext/fuzz/key", &encode_instance(&instance))
                .expect("an encoded instance decodes");
            assert_eq!(again, instance);
        }
        Err(Error::Decode { .. }) => {}
        Err(other) => panic!("junk must be a decode error, got {other:?}"),
    }
});
