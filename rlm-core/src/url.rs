//! URLs as they may be shown: in messages, logs and traces, never with their credentials.

/// `url` without the user info of its authority (`scheme://user:password@host/...` becomes
/// `scheme://host/...`); `None` when `url` has no `scheme://` (it cannot be shown safely,
/// since a bare string may be a secret itself).
///
/// ```
/// use rlm_core::url::url_without_credentials;
/// assert_eq!(
///     url_without_credentials("redis://:s3cret@cache:6380/2").as_deref(),
///     Some("redis://cache:6380/2")
/// );
/// assert_eq!(url_without_credentials("s3cret"), None);
/// ```
pub fn url_without_credentials(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(match rest[..end].rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://{host}{}", &rest[end..]),
        None => url.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_is_dropped_and_the_rest_kept() {
        let shown = |url| url_without_credentials(url).unwrap_or_default();
        assert_eq!(
            shown("https://user:secret@example.com/v1"),
            "https://example.com/v1"
        );
        assert_eq!(
            shown("http://localhost:11434/v1"),
            "http://localhost:11434/v1"
        );
        assert_eq!(shown("redis://user:s3cret@host"), "redis://host");
        // An `@` in the path is not user info.
        assert_eq!(shown("http://h/a@b"), "http://h/a@b");
    }
}
