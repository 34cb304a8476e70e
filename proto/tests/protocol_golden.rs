//! Golden byte fixtures of the native protocol: one request frame and one response frame of
//! every API, and one error response, so the wire layout cannot change by accident.
//!
//! The samples (`protocol_common::samples`) must encode to exactly the fixture bytes, and the
//! fixture bytes must decode back to the samples. `SLUICE_BLESS=1 cargo test -p sluice-proto
//! --test protocol_golden` rewrites the fixtures; review the diff, and bump the API's version
//! in the API table if a layout changed.

mod common;
mod protocol_common;

use std::path::PathBuf;

use bytes::BytesMut;
use common::{blessing, from_hex, to_hex};
use protocol_common::{all_apis, concat, samples};
use sluice_proto::protocol::*;

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/protocol")
        .join(format!("{name}.hex"))
}

/// Reads fixture `name`, or with `SLUICE_BLESS=1` first writes `built` to it.
fn fixture(name: &str, title: &str, built: &[u8], request: bool) -> Vec<u8> {
    let path = fixture_path(name);
    if blessing() {
        std::fs::create_dir_all(path.parent().expect("fixture dir")).expect("create dir");
        std::fs::write(&path, annotate(title, built, request)).expect("write fixture");
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with SLUICE_BLESS=1 to create)",
            path.display()
        )
    });
    from_hex(&text)
}

/// The fixture text: the length prefix and each header field on its own line with its
/// offset in the frame, then the body 16 bytes a line.
fn annotate(title: &str, frame: &[u8], request: bool) -> String {
    let mut out = format!(
        "# Sluice native protocol, golden fixture (proto/tests/protocol_golden.rs;\n\
         # SLUICE_BLESS=1 rewrites). {title}\n\
         # Hex bytes, integers little-endian; '#' starts a comment. See docs/PROTOCOL.md.\n"
    );
    let mut at = 0;
    let line = |out: &mut String, at: &mut usize, len: usize, what: &str| {
        let hex = to_hex(&frame[*at..*at + len]);
        out.push_str(&format!("{hex:<20} # @{at:<3} {what}\n"));
        *at += len;
    };
    let string_len = |at: usize| usize::from(u16::from_le_bytes([frame[at], frame[at + 1]]));
    line(
        &mut out,
        &mut at,
        4,
        "frame length u32 (bytes after this field)",
    );
    if request {
        line(&mut out, &mut at, 2, "api_key u16");
        line(&mut out, &mut at, 2, "api_version u16");
        line(&mut out, &mut at, 4, "correlation_id u32");
        let len = string_len(at);
        line(&mut out, &mut at, 2, "client_id length u16");
        line(&mut out, &mut at, len, "client_id UTF-8");
    } else {
        line(&mut out, &mut at, 4, "correlation_id u32");
        line(&mut out, &mut at, 2, "error i16");
        let len = string_len(at);
        line(&mut out, &mut at, 2, "message length u16");
        if len > 0 {
            line(&mut out, &mut at, len, "message UTF-8");
        }
    }
    let body = &frame[at..];
    if body.is_empty() {
        out.push_str(&format!("# @{at} no body\n"));
    } else {
        out.push_str(&format!("# @{at} body, {} bytes\n", body.len()));
        for chunk in body.chunks(16) {
            out.push_str(&to_hex(chunk));
            out.push('\n');
        }
    }
    out
}

fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[test]
fn request_frames_match_the_fixtures() {
    for api in all_apis() {
        let name = api.spec().name;
        let built = concat(&samples::request_frame(api));
        let golden = fixture(
            &format!("{}_request", snake(name)),
            &format!("{name} request v0, correlation_id 7, client_id \"golden\"."),
            &built,
            true,
        );
        assert_eq!(to_hex(&built), to_hex(&golden), "{name} request");

        let mut r =
            protocol_common::open_frame(BytesMut::from(&golden[..]), REQUEST_FRAME_BYTES_MAX);
        let header = RequestHeader::decode(&mut r).expect("header");
        assert_eq!(
            header,
            RequestHeader {
                api_key: api as u16,
                api_version: 0,
                correlation_id: 7,
                client_id: "golden".into(),
            }
        );
        assert!(
            samples::request_matches(api, r),
            "{name} request decodes to the sample"
        );
    }
}

#[test]
fn response_frames_match_the_fixtures() {
    for api in all_apis() {
        let name = api.spec().name;
        let built = concat(&samples::response_frame(api));
        let golden = fixture(
            &format!("{}_response", snake(name)),
            &format!("{name} response v0, correlation_id 7."),
            &built,
            false,
        );
        assert_eq!(to_hex(&built), to_hex(&golden), "{name} response");

        let mut r =
            protocol_common::open_frame(BytesMut::from(&golden[..]), RESPONSE_FRAME_BYTES_MAX);
        let header = ResponseHeader::decode(&mut r).expect("header");
        assert_eq!(
            header,
            ResponseHeader {
                correlation_id: 7,
                error: ErrorCode::NONE,
                message: String::new(),
            }
        );
        assert!(
            samples::response_matches(api, r),
            "{name} response decodes to the sample"
        );
    }
}

#[test]
fn error_response_matches_the_fixture() {
    let built = concat(&encode_error_response(
        7,
        ErrorCode::UNSUPPORTED_VERSION,
        "Fetch v9 is not supported (0..=0)",
    ));
    let golden = fixture(
        "error_response",
        "An error response: the header only, no body.",
        &built,
        false,
    );
    assert_eq!(to_hex(&built), to_hex(&golden));
    let mut r = protocol_common::open_frame(BytesMut::from(&golden[..]), RESPONSE_FRAME_BYTES_MAX);
    let header = ResponseHeader::decode(&mut r).expect("header");
    assert_eq!(header.error, ErrorCode::UNSUPPORTED_VERSION);
    assert_eq!(header.message, "Fetch v9 is not supported (0..=0)");
    r.finish().expect("no body");
}

#[test]
fn api_versions_request_is_hand_checkable() {
    // 16-byte payload: key 0, version 0, correlation 7, client_id "golden".
    let frame = concat(&samples::request_frame(ApiKey::ApiVersions));
    let expected: Vec<u8> = [
        &[0x10, 0, 0, 0][..],
        &[0, 0],
        &[0, 0],
        &[7, 0, 0, 0],
        &[6, 0],
        b"golden",
    ]
    .concat();
    assert_eq!(&frame[..], &expected[..]);
}

#[test]
fn every_api_has_both_fixtures() {
    if blessing() {
        // The other tests are writing them right now.
        return;
    }
    let dir = fixture_path("x").parent().expect("dir").to_path_buf();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = all_apis()
        .into_iter()
        .flat_map(|api| {
            let s = snake(api.spec().name);
            [format!("{s}_request.hex"), format!("{s}_response.hex")]
        })
        .chain(["error_response.hex".to_string()])
        .collect();
    expected.sort();
    assert_eq!(names, expected, "stale or missing fixtures");
}
