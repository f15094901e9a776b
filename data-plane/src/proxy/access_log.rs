//! Access log lines, one per request on stdout: JSON, or Traefik's Common Log Format.

use std::net::IpAddr;

use super::AccessLog;

/// What one line says about a request.
pub(super) struct Entry<'a> {
    pub(super) method: &'a http::Method,
    pub(super) uri: &'a http::Uri,
    pub(super) version: http::Version,
    pub(super) referer: &'a str,
    pub(super) agent: &'a str,
    pub(super) client: IpAddr,
    pub(super) entry_point: &'a str,
    pub(super) status: u16,
    /// `Content-Length` of the response, or `-`.
    pub(super) length: &'a str,
    /// Requests logged so far (Traefik's CLF counter).
    pub(super) count: u64,
    pub(super) router: &'a str,
    pub(super) service: &'a str,
    pub(super) ms: f64,
}

/// The line for `e` in format `fmt`.
pub(super) fn line(fmt: AccessLog, e: &Entry<'_>) -> String {
    match fmt {
        AccessLog::Json => serde_json::json!({
            "client": e.client.to_string(), "method": e.method.as_str(), "uri": e.uri.to_string(),
            "status": e.status, "router": e.router, "service": e.service, "entryPoint": e.entry_point,
            "durationMs": e.ms,
        })
        .to_string(),
        // Traefik's Common Log Format: client, user, time, request line, status, size,
        // referer, user agent, requests so far, router, service, duration.
        AccessLog::Clf => format!(
            "{} - - [{}] \"{} {} {:?}\" {} {} \"{}\" \"{}\" {} \"{}\" \"{}\" {:.0}ms",
            e.client,
            clf_time(std::time::SystemTime::now()),
            e.method,
            e.uri.path_and_query().map_or("/", |p| p.as_str()),
            e.version,
            e.status,
            e.length,
            e.referer,
            e.agent,
            e.count,
            if e.router.is_empty() { "-" } else { e.router },
            if e.service.is_empty() { "-" } else { e.service },
            e.ms
        ),
    }
}

/// A time as Common Log Format writes it, in UTC: `26/Nov/2026:06:18:47 +0000`.
fn clf_time(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    #[test]
    fn clf_time_is_a_civil_utc_date() {
        let at = |secs: u64| super::clf_time(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "01/Jan/1970:00:00:00 +0000");
        // `date -u -d @1795674527`: Thu Nov 26 06:28:47 UTC 2026.
        assert_eq!(at(1_795_674_527), "26/Nov/2026:06:28:47 +0000");
        // A leap day and the last second of a year.
        assert_eq!(at(951_782_400), "29/Feb/2000:00:00:00 +0000");
        assert_eq!(at(1_704_067_199), "31/Dec/2023:23:59:59 +0000");
        assert!(super::clf_time(SystemTime::now()).ends_with(" +0000"));
    }
}
