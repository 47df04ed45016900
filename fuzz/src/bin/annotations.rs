//! `conrdma_api::Request::from_annotations` over annotations built from the fuzz bytes.
//!
//! Each line is `key=value` (a line without `=` is a key with an empty value). A key starting
//! with `/` gets the `rdma.conrdma.io` prefix in front, so `/bandwidth=1G` is
//! `rdma.conrdma.io/bandwidth=1G`; other keys are used as they are.

use std::collections::HashMap;

use conrdma_api::{Request, ANNOTATION_PREFIX};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let text = String::from_utf8_lossy(data);
        let mut annotations = HashMap::new();
        for line in text.split('\n') {
            let (k, v) = line.split_once('=').unwrap_or((line, ""));
            let key = match k.strip_prefix('/') {
                Some(rest) => format!("{ANNOTATION_PREFIX}{rest}"),
                None => k.to_string(),
            };
            annotations.insert(key, v.to_string());
        }
        if let Ok(Some(req)) = Request::from_annotations(&annotations) {
            // Whatever is accepted must survive the JSON round trip the ledger and reports use.
            let json = serde_json::to_string(&req).expect("encoding an accepted request");
            let back: Request = serde_json::from_str(&json).expect("decoding an accepted request");
            assert_eq!(back, req);
            // And reading the same annotations again gives the same request.
            assert_eq!(
                Request::from_annotations(&annotations).unwrap(),
                Some(req.clone())
            );
            for name in ["", "main", "sidecar"] {
                let _ = req.applies_to(name);
            }
        }
    });
}
