//! Arbitrary bytes parsed as an HTTP/1.1 request head, then run through every check the layer
//! makes before an upgrade. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    if parsed.parse(data).is_err() {
        return;
    }
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return;
    };
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .version(if parsed.version == Some(0) {
            http::Version::HTTP_10
        } else {
            http::Version::HTTP_11
        });
    for header in parsed.headers.iter() {
        builder = builder.header(header.name, header.value);
    }
    if let Ok(request) = builder.body(()) {
        let _ = tower_ws_hub::internals::check_handshake(request);
    }
});
