use proptest::prelude::*;

use super::*;

fn clean(p: &str) -> String {
    sanitize(p).unwrap().into_owned()
}

#[test]
fn dot_segments_plain_or_encoded_cannot_climb_out_of_a_prefix() {
    assert_eq!(clean("/public/../admin/secret"), "/admin/secret");
    assert_eq!(clean("/public/%2e%2e/admin/secret"), "/admin/secret");
    assert_eq!(clean("/public/%2E%2E/admin/secret"), "/admin/secret");
    assert_eq!(clean("/public/.%2e/admin"), "/admin");
    assert_eq!(clean("/a/%2E%2E/%2E%2E/b/"), "/b/");
    assert_eq!(clean("/..///b///"), "/b/");
    assert_eq!(clean("/../../etc/passwd"), "/etc/passwd", "never above the root");
    assert_eq!(clean("/a/./b"), "/a/b");
}

#[test]
fn trailing_slashes_and_roots_as_gos_path_join() {
    assert_eq!(clean("/a/b/.."), "/a");
    assert_eq!(clean("/a/b/../"), "/a/");
    assert_eq!(clean("/a/."), "/a");
    assert_eq!(clean("/"), "/");
    assert_eq!(clean("//"), "/");
    assert_eq!(clean("/.."), "/");
    assert_eq!(clean("/a//b"), "/a/b");
    assert_eq!(clean("/a/"), "/a/");
}

#[test]
fn unreserved_escapes_are_decoded_and_the_rest_upper_cased() {
    assert_eq!(clean("/%41%42%43"), "/ABC");
    assert_eq!(clean("/ap%69/x"), "/api/x");
    assert_eq!(clean("/a%7e%2d%5f"), "/a~-_");
    assert_eq!(clean("/a%2fb"), "/a%2Fb");
    assert_eq!(clean("/a%20b"), "/a%20b");
    // Over-encoding stays: `%25` is not unreserved, so `%252E` is never a dot.
    assert_eq!(clean("/a/%252E%252E/b"), "/a/%252E%252E/b");
    // An encoded slash is not a separator: `..%2F` is no dot segment.
    assert_eq!(clean("/a/..%2Fb/"), "/a/..%2Fb/");
    assert_eq!(clean("/a\\b"), "/a%5Cb");
}

#[test]
fn paths_that_need_nothing_are_borrowed() {
    for p in ["/", "/crm/health", "/.well-known/x", "/a..b/c.", "/a/b.txt", "*", ""] {
        assert!(matches!(sanitize(p), Ok(Cow::Borrowed(_))), "{p}");
    }
}

#[test]
fn bad_escapes_and_fragments_are_refused() {
    for p in ["/a%zz", "/a%4", "/a%", "/%g0"] {
        assert_eq!(sanitize(p), Err(PathError::BadEscape), "{p}");
    }
    assert_eq!(sanitize("/a#b"), Err(PathError::Fragment));
}

#[test]
fn dot_segments_with_parameters_are_refused() {
    // Tomcat and Jetty read `/public/..;/admin` as `/admin`.
    for p in ["/public/..;/admin", "/public/.;/x", "/public/..;jsessionid=1/admin", "/public/%2e%2e;/admin", "/..;"] {
        assert_eq!(sanitize(p), Err(PathError::DotSegmentParameters), "{p}");
    }
    // A `;` elsewhere is an ordinary character.
    for p in ["/a;b", "/a/b;v=1", "/...;x", "/a..;/b", "/;/x"] {
        assert!(sanitize(p).is_ok(), "{p}");
    }
}

#[test]
fn encoded_characters_are_refused_unless_allowed() {
    let none = EncodedCharacters::default();
    for (p, want) in [
        ("/a%2Fb", Some("%2F")),
        ("/a%5Cb", Some("%5C")),
        ("/a%00", Some("%00")),
        ("/a%3B", Some("%3B")),
        ("/a%25", Some("%25")),
        ("/a%3F", Some("%3F")),
        ("/a%23", Some("%23")),
        ("/a%20b", None),
        ("/plain", None),
    ] {
        assert_eq!(none.refused(p), want, "{p}");
    }
    let slash = EncodedCharacters { allow_encoded_slash: true, ..Default::default() };
    assert_eq!(slash.refused("/a%2Fb"), None);
    assert_eq!(slash.refused("/a%2Fb%3B"), Some("%3B"));
    assert_eq!(EncodedCharacters::ALL.refused("/%2F%5C%00%3B%25%3F%23"), None);
    // A literal backslash is refused as an encoded one.
    assert_eq!(none.refused(&clean("/a\\b")), Some("%5C"));
}

#[test]
fn flags_are_set_by_traefiks_names() {
    let mut e = EncodedCharacters::default();
    for f in [
        "allowEncodedSlash",
        "allowEncodedBackSlash",
        "allowEncodedNullCharacter",
        "allowEncodedSemicolon",
        "allowEncodedPercent",
        "allowEncodedQuestionMark",
        "allowEncodedHash",
    ] {
        assert!(e.set(f, true), "{f}");
    }
    assert_eq!(e, EncodedCharacters::ALL);
    assert!(!e.set("allowEverything", true));
    // A snapshot carries them as bits, one per character.
    assert_eq!(EncodedCharacters::ALL.bits(), 0x7f);
    assert_eq!(EncodedCharacters::default().bits(), 0);
    let slash_and_hash =
        EncodedCharacters { allow_encoded_slash: true, allow_encoded_hash: true, ..Default::default() };
    assert_eq!(EncodedCharacters::from_bits(slash_and_hash.bits()), slash_and_hash);
}

/// Paths made of the pieces that matter: separators, dots, escapes of all kinds.
fn path_strategy() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("%2e".to_string()),
        Just("%2E".to_string()),
        Just("%2f".to_string()),
        Just("%25".to_string()),
        Just("%41".to_string()),
        Just("\\".to_string()),
        Just("a".to_string()),
        Just("~".to_string()),
        "[a-z0-9._~-]{1,3}".prop_map(|s| s),
    ];
    proptest::collection::vec(piece, 0..16).prop_map(|v| format!("/{}", v.concat()))
}

#[test]
fn dot_segments_are_found_however_they_are_written() {
    for p in [
        "/..",
        "/a/../b",
        "/.",
        "/a/./",
        "/%2e%2E",
        "/a/.%2e/b",
        "/%2E",
        "..",
        "/x/..",
        "/..;/admin",
        "/.;x",
        "/a\\..\\b",
        "/a%5C..%5cb",
    ] {
        assert!(has_dot_segment(p), "{p}");
    }
    for p in
        ["/", "/a", "/...", "/a..", "/..a", "/.well-known/x", "/%2e%2e%2e", "/a/b.c", "/%2f", "/a;..", "/x.json;v=1"]
    {
        assert!(!has_dot_segment(p), "{p}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn sanitizing_is_idempotent(p in path_strategy()) {
        let once = clean(&p);
        prop_assert_eq!(clean(&once), once.clone(), "{}", p);
    }

    #[test]
    fn a_sanitized_path_has_no_dot_segment_nor_empty_segment(p in path_strategy()) {
        let out = clean(&p);
        prop_assert!(out.starts_with('/'));
        // Its routing form (what Path rules see) has none either.
        let routed = crate::request::routing_path(&out).unwrap().into_owned();
        for form in [&out, &routed] {
            let inner = form.strip_suffix('/').unwrap_or(form);
            for seg in inner.split('/').skip(1) {
                prop_assert!(seg != "." && seg != "..", "{p} → {form}");
                prop_assert!(!seg.is_empty() || form == "/", "{p} → {form}");
            }
        }
    }

    #[test]
    fn any_input_is_sanitized_or_refused_without_panicking(p in "\\PC{0,40}") {
        let _ = sanitize(&p);
    }
}
