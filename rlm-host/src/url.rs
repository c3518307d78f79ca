//! URLs in messages: without credentials, and their host.

/// The host of a URL (without user info or port), if it has one.
pub(crate) fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = if host.starts_with('[') {
        host.split_once(']')
            .map_or(host, |(h, _)| h)
            .trim_start_matches('[')
    } else {
        host.split(':').next().unwrap_or(host)
    };
    (!host.is_empty()).then_some(host)
}

/// The URL without user info, for messages.
pub fn display_url(url: &str) -> String {
    rlm_core::url::url_without_credentials(url).unwrap_or_else(|| url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(
            display_url("https://user:secret@example.com/v1"),
            "https://example.com/v1"
        );
        assert_eq!(
            display_url("http://localhost:11434/v1"),
            "http://localhost:11434/v1"
        );
        assert_eq!(host_of("https://api.openai.com/v1"), Some("api.openai.com"));
        assert_eq!(
            host_of("https://k@api.openai.com:443/v1"),
            Some("api.openai.com")
        );
        assert_eq!(host_of("http://[::1]:8000/v1"), Some("::1"));
        assert_eq!(host_of("http://127.0.0.1:8000"), Some("127.0.0.1"));
    }
}
