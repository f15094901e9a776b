//! Router rules as an operator (or an attacker who can write manifests) provides them:
//! what the `rule` fuzz target runs, and what the stable test below replays from its corpus.
//!
//! It must return for any input, without panicking.

use crate::rules::Rule;

/// A router rule (`Host(`a`) && PathPrefix(`/b`)`): parsed, and when it parses, matched
/// against a few requests.
pub fn rule(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(rule) = Rule::parse(text) else { return };
    let mut headers = http::HeaderMap::new();
    headers.insert("x-a", http::HeaderValue::from_static("1"));
    for (host, path, query) in
        [("a.example.com", "/a/b", Some("k=v&x")), ("", "", None), ("[::1]:8080", "/%2F", Some(""))]
    {
        let view = crate::request::RequestView::with_client_ip(
            "GET",
            host,
            path,
            query,
            &headers,
            Some(std::net::IpAddr::from([10, 0, 0, 1])),
        );
        let _ = rule.matches(&view);
    }
    let _ = (rule.required_hosts(), rule.required_prefixes());
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_rule_corpus_replays_without_a_panic() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/rule");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            super::rule(&std::fs::read(e.unwrap().path()).unwrap());
            n += 1;
        }
        assert!(n > 0, "the rule corpus is empty");
    }
}
