//! The APIPortal's `ui.logoUrl`, fetched once by the control plane and served by the portal
//! at `/assets/logo`, so that pages make no request elsewhere. Only PNG, JPEG, GIF and WebP
//! images are kept (recognised by their first bytes, whatever the server says; never SVG,
//! which can carry script), at most 1 MB. A failed fetch is tried again after 5 minutes;
//! until a logo is there, the title stands alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// What is known of one logo URL.
#[derive(Clone)]
enum State {
    Fetching,
    Ready(&'static str, Bytes),
    Failed(Instant),
}

/// Logos by URL.
#[derive(Default)]
pub struct Logos {
    by_url: Arc<Mutex<HashMap<String, State>>>,
}

/// The image type of `b` by its first bytes.
pub fn image_type(b: &[u8]) -> Option<&'static str> {
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if b.len() > 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

impl Logos {
    /// Whether the logo at `url` can be served now; starts fetching it when it is not known
    /// (or failed more than 5 minutes ago).
    pub fn available(&self, url: &str) -> bool {
        if url.is_empty() {
            return false;
        }
        let mut m = self.by_url.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(url) {
            Some(State::Ready(..)) => return true,
            Some(State::Fetching) => return false,
            Some(State::Failed(at)) if at.elapsed() < Duration::from_secs(300) => return false,
            _ => {}
        }
        m.insert(url.to_string(), State::Fetching);
        let (by_url, url) = (self.by_url.clone(), url.to_string());
        tokio::spawn(async move {
            let got = match atrium_data_plane::fetch::Fetcher::new("", Duration::from_secs(10), 1 << 20) {
                Ok(f) => f.get(&url).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let state = match got {
                Ok(b) => match image_type(&b) {
                    Some(t) => {
                        tracing::info!(%url, bytes = b.len(), "portal logo fetched");
                        State::Ready(t, b)
                    }
                    None => {
                        tracing::warn!(%url, "portal logo refused: not a PNG, JPEG, GIF or WebP image");
                        State::Failed(Instant::now())
                    }
                },
                Err(e) => {
                    tracing::warn!(%url, error = %e, "portal logo could not be fetched; the title stands alone");
                    State::Failed(Instant::now())
                }
            };
            by_url.lock().unwrap_or_else(|p| p.into_inner()).insert(url, state);
        });
        false
    }

    /// The logo at `url`, if fetched: its type and bytes.
    pub fn get(&self, url: &str) -> Option<(&'static str, Bytes)> {
        match self.by_url.lock().unwrap_or_else(|p| p.into_inner()).get(url) {
            Some(State::Ready(t, b)) => Some((t, b.clone())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_raster_images_are_recognised() {
        assert_eq!(image_type(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(image_type(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(image_type(b"GIF89a..."), Some("image/gif"));
        assert_eq!(image_type(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(image_type(b"<svg onload=alert(1)>"), None);
        assert_eq!(image_type(b"<html>"), None);
    }
}
