//! Markdown from untrusted text (spec descriptions, content pages) to HTML that cannot run
//! anything: raw HTML is shown as text, and links and images keep only `http`, `https`,
//! `mailto` and relative targets (no `javascript:`, `data:` or `vbscript:`). Images are
//! shown as links, so a page makes no request the portal did not serve.

use pulldown_cmark::{CowStr, Event, LinkType, Options, Parser, Tag, TagEnd};

/// Whether `url` is safe in an `href`.
fn safe_url(url: &str) -> bool {
    let lower = url.trim().to_ascii_lowercase();
    match lower.split_once(':') {
        // A colon before any `/`, `?` or `#` is a scheme.
        Some((scheme, _)) if !scheme.contains(['/', '?', '#']) => matches!(scheme, "http" | "https" | "mailto"),
        _ => true,
    }
}

/// `text` (Markdown) as safe HTML, at most `max` bytes of input read.
pub fn render(text: &str) -> String {
    const MAX: usize = 64 * 1024;
    let text = truncate(text, MAX);
    let parser = Parser::new_ext(text, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH).map(|e| match e {
        Event::Html(h) | Event::InlineHtml(h) => Event::Text(h),
        Event::Start(Tag::Link { link_type, dest_url, title, id }) => {
            let dest_url = if safe_url(&dest_url) { dest_url } else { CowStr::from("#") };
            Event::Start(Tag::Link { link_type, dest_url, title, id })
        }
        Event::Start(Tag::Image { dest_url, title, id, .. }) => {
            let dest_url = if safe_url(&dest_url) { dest_url } else { CowStr::from("#") };
            Event::Start(Tag::Link { link_type: LinkType::Inline, dest_url, title, id })
        }
        Event::End(TagEnd::Image) => Event::End(TagEnd::Link),
        other => other,
    });
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    pulldown_cmark::html::push_html(&mut out, parser);
    out
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_html_and_script_urls_are_neutralised() {
        let html = render(
            "Hi <script>alert(1)</script> [x](javascript:alert(1)) [y](JaVaScRiPt:alert(1)) <img src=x onerror=alert(1)>",
        );
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.to_lowercase().contains("javascript:"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }

    #[test]
    fn images_become_links_and_safe_links_stay() {
        let html = render("![logo](https://evil.example/x.png) [docs](https://docs.example/a) [rel](/x) **b**");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains(r#"href="https://docs.example/a""#), "{html}");
        assert!(html.contains(r#"href="/x""#), "{html}");
        assert!(html.contains("<strong>b</strong>"));
        assert!(render("[d](data:text/html,x)").contains(r##"href="#""##));
    }
}
