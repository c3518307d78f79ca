//! [`Text`]: shared, immutable message text.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Immutable UTF-8 text shared by reference count: the content of a [`Message`](crate::Message).
///
/// Cloning a `Text` (and so a [`CompletionRequest`](crate::CompletionRequest)) copies a
/// pointer, not the text: a prompt is held once however many layers keep it (the caller's
/// strings, a cache's key, the request sent upstream). It reads as a `&str` through
/// [`Deref`] and compares, hashes, prints and serializes exactly like one.
///
/// Built from a `String` (or `Box<str>`) without copying the text; from a `&str` by copying
/// it once; and from any other owner of text, for example a scripting language's shared
/// string, without copying through [`Text::from_owner`].
///
/// ```
/// use rlm_core::Text;
///
/// let text = Text::from(String::from("a long prompt"));
/// let shared = text.clone(); // no copy of the text
/// assert_eq!(shared, "a long prompt");
/// assert_eq!(shared.len(), 13);
/// ```
#[derive(Clone)]
pub struct Text(Arc<dyn TextOwner>);

/// What holds a [`Text`]'s characters, for [`Text::from_shared`].
pub trait TextOwner: Send + Sync + 'static {
    /// The text; the same every time it is called.
    fn text(&self) -> &str;

    /// Bytes of memory the owner holds for the text (at least its length): what a cache that
    /// keeps the text keeps, a string's whole buffer rather than only its length.
    fn held_bytes(&self) -> usize {
        self.text().len()
    }
}

/// An owner of text known only as `AsRef<str>`: it holds the text's length.
struct Plain<T>(T);

impl<T: AsRef<str> + Send + Sync + 'static> TextOwner for Plain<T> {
    fn text(&self) -> &str {
        self.0.as_ref()
    }
}

impl TextOwner for String {
    fn text(&self) -> &str {
        self
    }

    fn held_bytes(&self) -> usize {
        self.capacity()
    }
}

impl Text {
    /// Empty text.
    pub fn new() -> Self {
        Self::from_owner("")
    }

    /// Text held by `owner`, without copying it. `owner` is kept (and dropped with the last
    /// clone); its `as_ref()` must return the same text every time it is called.
    pub fn from_owner<T: AsRef<str> + Send + Sync + 'static>(owner: T) -> Self {
        Self(Arc::new(Plain(owner)))
    }

    /// Text held by an owner already shared, without copying it: whoever keeps a
    /// [`Weak`](std::sync::Weak) to `owner` can see whether it is still held (the REPL does,
    /// to account for a script's prompt that only the requests' side still holds).
    pub fn from_shared<T: TextOwner>(owner: Arc<T>) -> Self {
        Self(owner)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        self.0.text()
    }

    /// Bytes of memory holding the text (at least its length; a `String`'s whole buffer):
    /// what keeping this text keeps alive, for a cache bounded in bytes.
    pub fn held_bytes(&self) -> usize {
        self.0.held_bytes().max(self.len())
    }

    /// Whether `self` and `other` are the same shared text (not merely equal text).
    pub fn ptr_eq(&self, other: &Self) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.0), Arc::as_ptr(&other.0))
    }
}

impl Default for Text {
    fn default() -> Self {
        Self::new()
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Self(Arc::new(text))
    }
}

impl From<Box<str>> for Text {
    fn from(text: Box<str>) -> Self {
        Self::from_owner(text)
    }
}

impl From<Arc<str>> for Text {
    fn from(text: Arc<str>) -> Self {
        Self::from_owner(text)
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        Self::from(text.to_owned())
    }
}

impl From<&String> for Text {
    fn from(text: &String) -> Self {
        Self::from(text.as_str())
    }
}

impl From<Text> for String {
    fn from(text: Text) -> Self {
        text.as_str().to_owned()
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        // The same shared text is equal without reading it.
        self.ptr_eq(other) || self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Text> for str {
    fn eq(&self, other: &Text) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, other: &Text) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Text> for String {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Hash for Text {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_text_and_compare_like_str() {
        let text = Text::from(String::from("héllo"));
        let clone = text.clone();
        assert!(text.ptr_eq(&clone));
        assert_eq!(text.as_ptr(), clone.as_ptr());
        assert_eq!(clone, "héllo");
        assert_eq!(clone, Text::from("héllo"));
        assert!(!clone.ptr_eq(&Text::from("héllo")));
        assert_eq!(format!("{clone:?} {clone}"), "\"héllo\" héllo");
        assert_eq!(Text::default(), "");
    }

    #[test]
    fn a_string_is_taken_without_copying() {
        let string = String::from("prompt");
        let at = string.as_ptr();
        assert_eq!(Text::from(string).as_ptr(), at);
    }

    #[test]
    fn held_bytes_are_the_owners_whole_buffer() {
        let mut string = String::with_capacity(1000);
        string.push_str("short");
        assert_eq!(Text::from(string).held_bytes(), 1000);
        assert_eq!(Text::from("short").held_bytes(), 5);
        assert_eq!(Text::from_owner(Box::<str>::from("boxed")).held_bytes(), 5);
        /// An owner that says it holds more than its text.
        struct Padded(&'static str);
        impl TextOwner for Padded {
            fn text(&self) -> &str {
                self.0
            }
            fn held_bytes(&self) -> usize {
                4096
            }
        }
        let shared = Text::from_shared(Arc::new(Padded("page")));
        assert_eq!((shared.as_str(), shared.held_bytes()), ("page", 4096));
    }

    #[test]
    fn serializes_as_a_string() {
        let text = Text::from("a \"quoted\" line\n");
        let json = serde_json::to_string(&text).unwrap_or_default();
        assert_eq!(json, r#""a \"quoted\" line\n""#);
        let back: Text = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, text);
    }
}
