//! Loading a context, a query or a prompt file: files, directories, JSON, stdin, and the
//! allowed roots of a server that reads paths its clients name.
//!
//! Rules (the CLI's `--help` and the README say the same):
//! - no context: an empty string;
//! - `-`: stdin, as text (or JSON / JSON Lines as [`ContextFormat`] says);
//! - a file: text, or JSON for `.json` and JSON Lines for `.jsonl` / `.ndjson` (auto), or as
//!   [`ContextFormat`] says;
//! - a directory: an array of strings, one per file, recursive, sorted by relative path
//!   (byte order of the path components); entries whose name starts with `.` are skipped,
//!   silently; symlinked directories (not followed: no loops) are skipped with one warning
//!   line each; binary files (a NUL byte in the first 8 KiB), unreadable entries and broken
//!   or looping links are skipped with a warning naming them; each document starts with a
//!   `==> relative/path <==` line unless [`LoadOptions::file_headers`] is off;
//! - invalid UTF-8 is decoded lossily (U+FFFD) with a warning, never an error;
//! - at most [`LoadOptions::max_bytes`] are read from any input (the context's files
//!   together, a query or system prompt file, stdin): more is an input error, so
//!   `/dev/zero`, a FIFO or an endless pipe cannot exhaust memory; a directory that cannot
//!   be listed is an input error too.
//!
//! [`AllowedRoots`] adds rules for paths a client names: every file read, the files a
//! directory's symlinks lead to included, must lie under one of the roots after resolving
//! `..` and symlinks; on Unix that is checked on the very handle that is read (each step
//! opened relative to the one before, never following a symlink by name), and only regular
//! files are read (a FIFO or device is refused without waiting on it).
//!
//! ```
//! use rlm_host::context::{self, LoadOptions};
//! use rlm_host::Context;
//!
//! let options = LoadOptions::default();
//! let loaded = context::load(Some("-"), &options, &b"the text"[..])?;
//! assert_eq!(loaded.context, Context::Text("the text".into()));
//! # Ok::<(), rlm_host::HostError>(())
//! ```

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use rlm_repl::{Context, TextBuilder};
use serde_json::Value;

use crate::HostError;

#[cfg(unix)]
mod beneath;

/// How many bytes are checked for a NUL byte to call a file binary.
const BINARY_SNIFF: usize = 8 * 1024;
/// File names listed in a warning before "and N more".
const NAMES_SHOWN: usize = 5;
/// The most bytes read from one input by default: 1 GiB.
pub const DEFAULT_MAX_CONTEXT_BYTES: usize = 1 << 30;

/// How to read a context file or stdin (a directory is always one text document per file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ContextFormat {
    /// By file extension: `.json` is JSON, `.jsonl` / `.ndjson` are JSON Lines, anything
    /// else (and stdin) is text.
    #[default]
    Auto,
    /// One string.
    Text,
    /// A JSON value: an object becomes a map, an array an array.
    Json,
    /// JSON Lines: one JSON value per non-empty line, as an array.
    Jsonl,
}

/// How a context is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// How a file or stdin is parsed.
    pub format: ContextFormat,
    /// Start each document of a directory with a `==> relative/path <==` line.
    pub file_headers: bool,
    /// The most bytes read from the input, a directory's files together (0: no limit).
    pub max_bytes: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            format: ContextFormat::Auto,
            file_headers: true,
            max_bytes: DEFAULT_MAX_CONTEXT_BYTES,
        }
    }
}

/// A loaded context and what the user should be told about it.
#[derive(Debug)]
pub struct Loaded {
    /// The context.
    pub context: Context,
    /// Warnings for the user (lossy decoding, skipped files).
    pub warnings: Vec<String>,
}

/// The error for an input larger than the bound.
fn too_large(what: &str, max_bytes: usize) -> HostError {
    HostError::Input(format!(
        "{what} is larger than --max-context-bytes ({max_bytes} bytes); raise the limit if \
         this is meant (e.g. --max-context-bytes 4G)"
    ))
}

/// Reads all of `reader` if it holds at most `max_bytes` (`None`: no limit); `Ok(None)` if it
/// holds more (only `max_bytes + 1` are read to tell).
fn read_at_most(reader: impl Read, max_bytes: Option<usize>) -> std::io::Result<Option<Vec<u8>>> {
    let limit = max_bytes.map_or(u64::MAX, |max| {
        u64::try_from(max).map_or(u64::MAX, |n| n.saturating_add(1))
    });
    let mut bytes = Vec::new();
    reader.take(limit).read_to_end(&mut bytes)?;
    Ok(max_bytes
        .is_none_or(|max| bytes.len() <= max)
        .then_some(bytes))
}

/// The byte bound as an option (0: none).
fn bound(max_bytes: usize) -> Option<usize> {
    (max_bytes != 0).then_some(max_bytes)
}

/// Reads at most `max_bytes` of `reader` (0: no limit); more is an error.
fn read_bounded(reader: impl Read, what: &str, max_bytes: usize) -> Result<Vec<u8>, HostError> {
    read_at_most(reader, bound(max_bytes))
        .map_err(|e| HostError::Input(format!("cannot read {what}: {e}")))?
        .ok_or_else(|| too_large(what, max_bytes))
}

/// Reads all of `reader` as text, lossily, at most `max_bytes` (0: no limit); `what` names
/// the source in the warning and in errors.
///
/// # Errors
/// [`HostError::Input`]: the reader failed, or holds more than `max_bytes`.
pub fn read_text(
    reader: impl Read,
    what: &str,
    max_bytes: usize,
    warnings: &mut Vec<String>,
) -> Result<String, HostError> {
    let bytes = read_bounded(reader, what, max_bytes)?;
    Ok(decode(bytes, what, warnings))
}

/// Bytes read at a time when a text context is read straight into the REPL's string.
/// Small enough to stay in the processor's cache between the read and the copy, and to
/// touch few fresh pages for a small file: with 4 MB pieces a run over a 2.4 MB context
/// took about 2 ms more (`perf stat -r 40 rlm run ...`, 16.4 to 17.1 against 14.1 to 14.6
/// ms); a 1 GB context loads in the same time either way.
const TEXT_PIECE: usize = 256 << 10;

/// The text context in `reader`, read as [`read_text`] reads (lossily, a byte order mark
/// removed, at most `max_bytes`, 0: no limit) but piece by piece straight into the string the
/// REPL holds ([`TextBuilder`]): a large context is never held twice, not even for a moment.
///
/// # Errors
/// [`HostError::Input`]: the reader failed, or holds more than `max_bytes`.
fn read_text_context(
    reader: impl Read,
    what: &str,
    max_bytes: usize,
    warnings: &mut Vec<String>,
) -> Result<Context, HostError> {
    read_text_context_by(reader, what, max_bytes, warnings, TEXT_PIECE)
}

/// [`read_text_context`], `piece` bytes at a time (at least 4).
fn read_text_context_by(
    reader: impl Read,
    what: &str,
    max_bytes: usize,
    warnings: &mut Vec<String>,
    piece: usize,
) -> Result<Context, HostError> {
    let limit = bound(max_bytes).map_or(u64::MAX, |max| {
        u64::try_from(max).map_or(u64::MAX, |n| n.saturating_add(1))
    });
    let mut reader = reader.take(limit);
    let mut text = TextBuilder::new();
    let mut buffer = vec![0; piece.max(4)];
    // Bytes at the start of `buffer`: the end of the last piece, an unfinished character.
    let mut carried = 0;
    let mut read = 0usize;
    let mut first = true;
    let mut lossy = false;
    loop {
        let mut filled = carried;
        while filled < buffer.len() {
            match reader.read(&mut buffer[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(HostError::Input(format!("cannot read {what}: {e}"))),
            }
        }
        read = read.saturating_add(filled - carried);
        if bound(max_bytes).is_some_and(|max| read > max) {
            return Err(too_large(what, max_bytes));
        }
        let ended = filled < buffer.len();
        let mut piece = &buffer[..filled];
        if first {
            first = false;
            piece = piece.strip_prefix(BOM).unwrap_or(piece);
        }
        let whole = if ended {
            piece.len()
        } else {
            whole_characters(piece)
        };
        // Valid text is checked by `from_utf8`, several times faster than `utf8_chunks`.
        match std::str::from_utf8(&piece[..whole]) {
            Ok(valid) => text.push_str(valid),
            Err(_) => {
                for chunk in piece[..whole].utf8_chunks() {
                    text.push_str(chunk.valid());
                    if !chunk.invalid().is_empty() {
                        text.push_str(char::REPLACEMENT_CHARACTER.encode_utf8(&mut [0; 4]));
                        lossy = true;
                    }
                }
            }
        }
        if ended {
            break;
        }
        carried = piece.len() - whole;
        buffer.copy_within(filled - carried..filled, 0);
    }
    if lossy {
        warnings.push(invalid_utf8(what));
    }
    Ok(text.finish())
}

/// The byte order mark in UTF-8.
const BOM: &[u8] = "\u{feff}".as_bytes();

/// The length of `bytes` without an unfinished character at its end: a lead byte whose
/// sequence would need more bytes than follow it (and those bytes). Decoding stops and
/// starts again at a lead byte whatever came before it, so decoding the two parts one after
/// the other (the end joined to the next piece) gives what decoding the whole gives.
fn whole_characters(bytes: &[u8]) -> usize {
    let from = bytes.len().saturating_sub(4);
    for at in (from..bytes.len()).rev() {
        let needs = match bytes[at] {
            // A continuation byte: the lead, if any, is further back.
            0x80..=0xBF => continue,
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => 1,
        };
        return if at + needs > bytes.len() {
            at
        } else {
            bytes.len()
        };
    }
    bytes.len()
}

/// The warning for input that was not valid UTF-8.
fn invalid_utf8(what: &str) -> String {
    format!("{what} is not valid UTF-8; invalid bytes were replaced with U+FFFD")
}

/// UTF-8 text from bytes; invalid sequences become U+FFFD with a warning. A byte order mark
/// at the start is removed.
fn decode(bytes: Vec<u8>, what: &str, warnings: &mut Vec<String>) -> String {
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            warnings.push(invalid_utf8(what));
            String::from_utf8_lossy(e.as_bytes()).into_owned()
        }
    };
    without_bom(text)
}

/// `text` without a UTF-8 byte order mark at its start (editors on Windows write one; it is
/// not part of the text, and JSON parsers refuse it).
fn without_bom(mut text: String) -> String {
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    text
}

/// Reads a text file named by a setting (`what`: "query file", "system prompt file").
///
/// # Errors
/// [`HostError::Input`]: the file cannot be read, or holds more than `max_bytes`.
pub fn read_text_file(
    path: &Path,
    what: &str,
    max_bytes: usize,
    warnings: &mut Vec<String>,
) -> Result<String, HostError> {
    let what = format!("{what} {}", path.display());
    let file =
        fs::File::open(path).map_err(|e| HostError::Input(format!("cannot read {what}: {e}")))?;
    read_text(file, &what, max_bytes, warnings)
}

/// Loads the context `spec` names (`None`: an empty string; `-`: `stdin`). A path need not
/// be UTF-8.
///
/// # Errors
/// [`HostError::Input`] for what cannot be read or parsed, or is over the bound;
/// [`HostError::Usage`] for a JSON format asked of a directory.
pub fn load<P: AsRef<Path> + ?Sized>(
    spec: Option<&P>,
    options: &LoadOptions,
    stdin: impl Read,
) -> Result<Loaded, HostError> {
    let mut warnings = Vec::new();
    let context = match spec.map(AsRef::as_ref) {
        None => Context::Text(String::new()),
        Some(path) if path == Path::new("-") => {
            let what = "the context from stdin";
            if is_text(options.format, None) {
                read_text_context(stdin, what, options.max_bytes, &mut warnings)?
            } else {
                let text = read_text(stdin, what, options.max_bytes, &mut warnings)?;
                parse(text, options.format, None, what)?
            }
        }
        Some(path) => load_path(path, options, None, &mut warnings, true)?,
    };
    Ok(Loaded { context, warnings })
}

/// Loads a file or directory; `listing` is the directory's, when it was walked already. With
/// `shared_text`, a text file is read straight into the REPL's string (a shared context, see
/// [`read_text_context`]); else into a [`Context::Text`].
fn load_path(
    path: &Path,
    options: &LoadOptions,
    listing: Option<Listing>,
    warnings: &mut Vec<String>,
    shared_text: bool,
) -> Result<Context, HostError> {
    let metadata = fs::metadata(path)
        .map_err(|e| HostError::Input(format!("cannot read context {}: {}", path.display(), e)))?;
    if metadata.is_dir() {
        directory_format(path, options.format)?;
        let listing = match listing {
            Some(listing) => listing,
            None => Listing::of(path)?,
        };
        Ok(Context::Documents(load_dir(
            path, listing, options, warnings,
        )?))
    } else {
        let what = format!("context file {}", path.display());
        let file = fs::File::open(path)
            .map_err(|e| HostError::Input(format!("cannot read {what}: {e}")))?;
        if shared_text && is_text(options.format, Some(path)) {
            return read_text_context(file, &what, options.max_bytes, warnings);
        }
        let text = read_text(file, &what, options.max_bytes, warnings)?;
        parse(text, options.format, Some(path), &what)
    }
}

/// Whether a file at `path` (or stdin) is read as text in `format`.
fn is_text(format: ContextFormat, path: Option<&Path>) -> bool {
    resolved_format(format, path) == ContextFormat::Text
}

/// The format a file at `path` (or stdin) is read in: `Auto` decided by the extension.
fn resolved_format(format: ContextFormat, path: Option<&Path>) -> ContextFormat {
    match format {
        ContextFormat::Auto => {
            let extension = path
                .and_then(Path::extension)
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            match extension.as_deref() {
                Some("json") => ContextFormat::Json,
                Some("jsonl" | "ndjson") => ContextFormat::Jsonl,
                _ => ContextFormat::Text,
            }
        }
        other => other,
    }
}

/// A directory is read as text documents: a JSON format asked of it is a usage error.
fn directory_format(path: &Path, format: ContextFormat) -> Result<(), HostError> {
    if matches!(format, ContextFormat::Json | ContextFormat::Jsonl) {
        return Err(HostError::Usage(format!(
            "--context-format {} needs a file, but {} is a directory",
            if format == ContextFormat::Json {
                "json"
            } else {
                "jsonl"
            },
            path.display()
        )));
    }
    Ok(())
}

/// Turns text into a context according to the format (and the extension, for `auto`).
fn parse(
    text: String,
    format: ContextFormat,
    path: Option<&Path>,
    what: &str,
) -> Result<Context, HostError> {
    let format = resolved_format(format, path);
    let invalid = |e: serde_json::Error, line: Option<usize>| {
        // serde_json places the error within the text it parsed: for a JSONL line that is
        // always line 1, so the file's own line number replaces it.
        let at = match line {
            Some(line) => {
                let message = e.to_string();
                let message = message
                    .rsplit_once(" at line ")
                    .map_or(message.as_str(), |(message, _)| message);
                format!("line {line} column {}: {message}", e.column())
            }
            None => e.to_string(),
        };
        HostError::Input(format!(
            "{what} is not valid JSON ({at}); use --context-format text to read it as text"
        ))
    };
    Ok(match format {
        ContextFormat::Json => {
            // Exact: integers beyond 64 bits are kept as strings, never rounded.
            let value = rlm_repl::parse_json_exact(&text).map_err(|e| invalid(e, None))?;
            match value {
                Value::String(text) => Context::Text(text),
                other => Context::Json(other),
            }
        }
        ContextFormat::Jsonl => {
            let mut items = Vec::new();
            for (number, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                items.push(
                    rlm_repl::parse_json_exact(line).map_err(|e| invalid(e, Some(number + 1)))?,
                );
            }
            Context::Json(Value::Array(items))
        }
        ContextFormat::Text | ContextFormat::Auto => Context::Text(text),
    })
}

/// What a directory holds, by the loader's rules: the regular files under it (symlinks to
/// files included), relative to it; what could not be read; symlinked directories (not
/// followed); and which of the files are symlinks.
#[derive(Debug, Default)]
struct Listing {
    files: Vec<PathBuf>,
    unreadable: Vec<String>,
    linked_dirs: Vec<String>,
    linked_files: Vec<PathBuf>,
}

impl Listing {
    /// Walks `root`, sorted by relative path.
    fn of(root: &Path) -> Result<Self, HostError> {
        // A directory that cannot be listed is unreadable input, not an empty context.
        fs::read_dir(root).map_err(|e| {
            HostError::Input(format!(
                "cannot list the context directory {}: {e}",
                root.display()
            ))
        })?;
        let mut listing = Self::default();
        listing.walk(root, Path::new(""));
        listing.files.sort();
        listing.linked_dirs.sort();
        Ok(listing)
    }

    /// Collects the regular files under `root/relative` (following symlinks to files, not
    /// to directories), skipping hidden entries.
    fn walk(&mut self, root: &Path, relative: &Path) {
        let dir = root.join(relative);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                self.unreadable
                    .push(format!("{} ({e})", display_dir(relative)));
                return;
            }
        };
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = relative.join(&name);
            let Ok(kind) = entry.file_type() else {
                self.unreadable.push(path.display().to_string());
                continue;
            };
            if kind.is_dir() {
                self.walk(root, &path);
            } else if kind.is_file() {
                self.files.push(path);
            } else if kind.is_symlink() {
                // A link to a file is read; a link to a directory is not followed; a broken
                // or looping link is reported.
                match fs::metadata(entry.path()) {
                    Ok(target) if target.is_file() => {
                        self.linked_files.push(path.clone());
                        self.files.push(path);
                    }
                    Ok(target) if target.is_dir() => {
                        self.linked_dirs.push(path.display().to_string());
                    }
                    Ok(_) => {}
                    Err(e) => self.unreadable.push(format!("{} ({e})", path.display())),
                }
            }
        }
    }
}

/// One document per file of `listing` (the walk of `root`).
fn load_dir(
    root: &Path,
    listing: Listing,
    options: &LoadOptions,
    warnings: &mut Vec<String>,
) -> Result<Vec<String>, HostError> {
    let Listing {
        files,
        unreadable,
        linked_dirs,
        ..
    } = listing;
    let mut documents = Documents::new(root, options);
    documents.unreadable = unreadable;
    documents.linked_dirs = linked_dirs;
    for relative in files {
        match fs::File::open(root.join(&relative)) {
            Ok(file) => documents.add(&relative, file)?,
            Err(e) => documents
                .unreadable
                .push(format!("{} ({e})", relative.display())),
        }
    }
    Ok(documents.finish(warnings))
}

/// The documents of a directory as its files are read, and what was skipped.
struct Documents<'a> {
    root: &'a Path,
    options: &'a LoadOptions,
    documents: Vec<String>,
    binary: Vec<String>,
    lossy: Vec<String>,
    unreadable: Vec<String>,
    linked_dirs: Vec<String>,
    /// Bytes of the files read so far: each file may take what they left of the limit.
    used: usize,
}

impl<'a> Documents<'a> {
    fn new(root: &'a Path, options: &'a LoadOptions) -> Self {
        Self {
            root,
            options,
            documents: Vec::new(),
            binary: Vec::new(),
            lossy: Vec::new(),
            unreadable: Vec::new(),
            linked_dirs: Vec::new(),
            used: 0,
        }
    }

    /// Reads the file at `relative` as one document (or skips it, saying why).
    ///
    /// # Errors
    /// [`HostError::Input`] when the directory's files pass the byte bound.
    fn add(&mut self, relative: &Path, reader: impl Read) -> Result<(), HostError> {
        let max_bytes = self.options.max_bytes;
        let left = bound(max_bytes).map(|max| max.saturating_sub(self.used));
        let bytes = match read_at_most(reader, left) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                let what = format!("the files of context directory {}", self.root.display());
                return Err(too_large(&what, max_bytes));
            }
            Err(e) => {
                self.unreadable
                    .push(format!("{} ({e})", relative.display()));
                return Ok(());
            }
        };
        self.used = self.used.saturating_add(bytes.len());
        if bytes[..bytes.len().min(BINARY_SNIFF)].contains(&0) {
            self.binary.push(relative.display().to_string());
            return Ok(());
        }
        let name = relative.to_string_lossy().into_owned();
        let text = without_bom(match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                self.lossy.push(name.clone());
                String::from_utf8_lossy(e.as_bytes()).into_owned()
            }
        });
        let document = if self.options.file_headers {
            let mut document = String::with_capacity(text.len() + name.len() + 10);
            let _ = writeln!(document, "==> {name} <==");
            document.push_str(&text);
            document
        } else {
            text
        };
        self.documents.push(document);
        Ok(())
    }

    /// The documents, with a warning for each kind of entry skipped.
    fn finish(self, warnings: &mut Vec<String>) -> Vec<String> {
        let Self {
            root,
            documents,
            binary,
            lossy,
            unreadable,
            linked_dirs,
            ..
        } = self;
        let shown = root.display();
        for dir in &linked_dirs {
            warnings.push(format!(
                "skipped {dir} in {shown}: a symlink to a directory (not followed)"
            ));
        }
        if !lossy.is_empty() {
            warnings.push(format!(
                "{} in {shown} {} not valid UTF-8; invalid bytes were replaced with U+FFFD: {}",
                count(lossy.len(), "file"),
                if lossy.len() == 1 { "is" } else { "are" },
                list(&lossy)
            ));
        }
        if !binary.is_empty() {
            warnings.push(format!(
                "skipped {} in {shown} (binary): {}",
                count(binary.len(), "file"),
                list(&binary)
            ));
        }
        if !unreadable.is_empty() {
            warnings.push(format!(
                "skipped {} in {shown} that could not be read: {}",
                count(unreadable.len(), "entry"),
                list(&unreadable)
            ));
        }
        if documents.is_empty() {
            warnings.push(format!(
                "no text files in {shown}: the context is an empty list"
            ));
        }
        documents
    }
}

fn display_dir(relative: &Path) -> String {
    if relative.as_os_str().is_empty() {
        ".".to_owned()
    } else {
        relative.display().to_string()
    }
}

fn count(n: usize, noun: &str) -> String {
    match (n, noun) {
        (1, _) => format!("1 {noun}"),
        (_, "entry") => format!("{n} entries"),
        _ => format!("{n} {noun}s"),
    }
}

fn list(names: &[String]) -> String {
    let mut text = names
        .iter()
        .take(NAMES_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > NAMES_SHOWN {
        let _ = write!(text, " and {} more", names.len() - NAMES_SHOWN);
    }
    text
}

/// The directories a server's clients may read from, and the loader under them.
///
/// A path a client names must lie under a root; a relative path is tried under each root
/// in turn. On Unix every step of it is opened relative to the directory handle before it,
/// without following symlinks by name: a symlink is read and its target resolved the same
/// way, only while it stays under a root (`..` never climbs above one). So the file checked
/// is the file read, even while symlinks are swapped under the server. Only regular files
/// are read, and opening never waits (a FIFO or a device under a root is refused, never
/// read). A directory is walked by the same rules [`load`] reads it with, by handle too,
/// and a symlink in it that leads outside the roots refuses the whole directory. One path
/// is a context as [`load`] makes it; several are an array of documents.
///
/// ```
/// use rlm_host::context::AllowedRoots;
///
/// let dir = std::env::temp_dir();
/// let roots = AllowedRoots::new(&[dir])?;
/// assert!(roots.resolve("/").is_err(), "the file system root is not under the temp dir");
/// # Ok::<(), rlm_host::HostError>(())
/// ```
#[derive(Debug, Clone)]
pub struct AllowedRoots {
    roots: Vec<PathBuf>,
    /// A handle on each root, in the order of `roots`.
    #[cfg(unix)]
    handles: std::sync::Arc<Vec<beneath::Root>>,
}

/// A path admitted under a root: where it leads, and a directory's walk.
#[cfg(not(unix))]
struct Admitted {
    path: PathBuf,
    listing: Option<Listing>,
}

impl AllowedRoots {
    /// The roots, each an existing directory (kept in their resolved form).
    ///
    /// # Errors
    /// [`HostError::Usage`] when there is no root, or one is not a readable directory.
    pub fn new(roots: &[PathBuf]) -> Result<Self, HostError> {
        if roots.is_empty() {
            return Err(HostError::Usage(
                "at least one --root DIR is required".to_owned(),
            ));
        }
        let mut canonical = Vec::with_capacity(roots.len());
        for root in roots {
            let path = fs::canonicalize(root)
                .map_err(|e| HostError::Usage(format!("--root {}: {e}", root.display())))?;
            if !path.is_dir() {
                return Err(HostError::Usage(format!(
                    "--root {} is not a directory",
                    root.display()
                )));
            }
            canonical.push(path);
        }
        #[cfg(unix)]
        let handles = canonical
            .iter()
            .map(|path| {
                beneath::Root::open(path)
                    .map_err(|e| HostError::Usage(format!("--root {}: {e}", path.display())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            roots: canonical,
            #[cfg(unix)]
            handles: std::sync::Arc::new(handles),
        })
    }

    /// The roots, resolved.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The roots as one comma-separated line, for messages.
    pub fn list(&self) -> String {
        self.roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `path` resolved under a root, with every file a directory holds checked too.
    ///
    /// # Errors
    /// [`HostError::Input`] when it does not exist, leads outside the roots (through `..`
    /// or a symlink) or is neither a regular file nor a directory.
    pub fn resolve(&self, path: &str) -> Result<PathBuf, HostError> {
        #[cfg(unix)]
        {
            let opened = self.open(path)?;
            let resolved = opened.path(&self.handles);
            match opened.kind {
                rustix::fs::FileType::RegularFile => {}
                rustix::fs::FileType::Directory => {
                    let place = opened.into_place();
                    beneath::walk(&self.handles, &place, Path::new(""), &mut Check)
                        .map_err(|e| self.walk_error(path, e))?;
                }
                _ => return Err(not_regular(path)),
            }
            Ok(resolved)
        }
        #[cfg(not(unix))]
        {
            self.admit(path).map(|admitted| admitted.path)
        }
    }

    /// Loads what `paths` name: one path as [`load`] reads it, several as an array of
    /// documents (a directory's documents in place; any other context as one document
    /// headed by the path as given). Every path is resolved and opened before any is read,
    /// and nothing is returned when one is refused.
    ///
    /// # Errors
    /// [`HostError::Input`] for an empty list, a path refused by [`resolve`](Self::resolve)
    /// or one that cannot be read; as [`load`] otherwise.
    pub fn load(&self, paths: &[String], options: &LoadOptions) -> Result<Loaded, HostError> {
        if paths.is_empty() {
            return Err(HostError::Input("`paths` is empty".to_owned()));
        }
        #[cfg(unix)]
        let opened = paths
            .iter()
            .map(|p| self.open(p))
            .collect::<Result<Vec<_>, _>>()?;
        #[cfg(not(unix))]
        let opened = paths
            .iter()
            .map(|p| self.admit(p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut warnings = Vec::new();
        let mut contexts = Vec::with_capacity(paths.len());
        for (asked, opened) in paths.iter().zip(opened) {
            contexts.push(self.read(asked, opened, options, &mut warnings)?);
        }
        if contexts.len() == 1 {
            let Some(context) = contexts.pop() else {
                return Err(HostError::Internal("a loaded path went missing".into()));
            };
            return Ok(Loaded { context, warnings });
        }
        let mut documents = Vec::new();
        for (asked, context) in paths.iter().zip(contexts) {
            match context {
                Context::Documents(docs) => documents.extend(docs),
                Context::Text(text) => documents.push(format!("==> {asked} <==\n{text}")),
                Context::Json(value) => documents.push(format!("==> {asked} <==\n{value}")),
                other => {
                    let info = other.info();
                    documents.push(format!("==> {asked} <==\n({})", info.kind));
                }
            }
        }
        Ok(Loaded {
            context: Context::Documents(documents),
            warnings,
        })
    }

    /// Opens `path` by handle under the roots (an absolute path under the root it names, a
    /// relative one under each root in turn).
    #[cfg(unix)]
    fn open(&self, path: &str) -> Result<beneath::Opened, HostError> {
        use beneath::{Failure, Place};
        let given = Path::new(path);
        let missing = || {
            HostError::Input(format!(
                "{path}: no such file or directory under the allowed roots"
            ))
        };
        let found = if given.is_absolute() {
            let (index, rest) = match beneath::under(&self.handles, given) {
                Some((index, rest)) => (index, rest.to_path_buf()),
                None => {
                    // Not under a root as written: where it leads now names the root, and
                    // the rest is opened by handle from there.
                    let resolved = fs::canonicalize(given).map_err(|_| missing())?;
                    match beneath::under(&self.handles, &resolved) {
                        Some((index, rest)) => (index, rest.to_path_buf()),
                        None => return Err(self.outside(path)),
                    }
                }
            };
            beneath::open(&self.handles, Place::root(index), &rest)
        } else {
            let mut found = Err(Failure::Io(std::io::ErrorKind::NotFound.into()));
            for index in 0..self.handles.len() {
                found = beneath::open(&self.handles, Place::root(index), given);
                if !matches!(&found, Err(Failure::Io(e)) if e.kind() == std::io::ErrorKind::NotFound)
                {
                    break;
                }
            }
            found
        };
        found.map_err(|failure| match failure {
            Failure::Outside => self.outside(path),
            Failure::Io(e) if e.kind() == std::io::ErrorKind::NotFound => missing(),
            Failure::Io(e) => HostError::Input(format!("cannot read {path}: {e}")),
        })
    }

    /// Reads an opened path: a regular file as [`load`] reads it, a directory walked by
    /// handle.
    #[cfg(unix)]
    fn read(
        &self,
        asked: &str,
        opened: beneath::Opened,
        options: &LoadOptions,
        warnings: &mut Vec<String>,
    ) -> Result<Context, HostError> {
        let resolved = opened.path(&self.handles);
        match opened.kind {
            rustix::fs::FileType::RegularFile => {
                let what = format!("context file {}", resolved.display());
                let file = fs::File::from(opened.fd);
                let text = read_text(file, &what, options.max_bytes, warnings)?;
                parse(text, options.format, Some(&resolved), &what)
            }
            rustix::fs::FileType::Directory => {
                directory_format(&resolved, options.format)?;
                let place = opened.into_place();
                let mut documents = Documents::new(&resolved, options);
                beneath::walk(&self.handles, &place, Path::new(""), &mut documents)
                    .map_err(|e| self.walk_error(asked, e))?;
                Ok(Context::Documents(documents.finish(warnings)))
            }
            _ => Err(not_regular(asked)),
        }
    }

    #[cfg(not(unix))]
    fn read(
        &self,
        _asked: &str,
        admitted: Admitted,
        options: &LoadOptions,
        warnings: &mut Vec<String>,
    ) -> Result<Context, HostError> {
        load_path(&admitted.path, options, admitted.listing, warnings, false)
    }

    #[cfg(unix)]
    fn walk_error(&self, path: &str, error: beneath::WalkError) -> HostError {
        match error {
            beneath::WalkError::LinkOutside(link) => HostError::Input(format!(
                "{path}: {} links outside the allowed roots ({}); it is refused",
                link.display(),
                self.list()
            )),
            beneath::WalkError::Visit(error) => error,
        }
    }

    #[cfg(unix)]
    fn outside(&self, path: &str) -> HostError {
        HostError::Input(format!(
            "{path} is outside the allowed roots ({}); it is refused",
            self.list()
        ))
    }

    /// Resolves `path` under a root and, for a directory, walks it and checks where its
    /// symlinks lead.
    #[cfg(not(unix))]
    fn admit(&self, path: &str) -> Result<Admitted, HostError> {
        let given = Path::new(path);
        let candidates: Vec<PathBuf> = if given.is_absolute() {
            vec![given.to_path_buf()]
        } else {
            self.roots.iter().map(|root| root.join(given)).collect()
        };
        let Some(resolved) = candidates.iter().find_map(|c| fs::canonicalize(c).ok()) else {
            return Err(HostError::Input(format!(
                "{path}: no such file or directory under the allowed roots"
            )));
        };
        let Some(root) = self.root_of(&resolved) else {
            return Err(HostError::Input(format!(
                "{path} is outside the allowed roots ({}); it is refused",
                self.list()
            )));
        };
        if !resolved.is_dir() {
            return Ok(Admitted {
                path: resolved,
                listing: None,
            });
        }
        // A directory that cannot be listed is reported when it is loaded.
        let Ok(listing) = Listing::of(&resolved) else {
            return Ok(Admitted {
                path: resolved,
                listing: None,
            });
        };
        // Every file the loader would read must stay under a root: a symlink to a file
        // outside is refused (symlinked directories are not followed).
        for link in &listing.linked_files {
            let Ok(target) = fs::canonicalize(resolved.join(link)) else {
                continue;
            };
            if self.root_of(&target).is_none() {
                let shown = resolved.join(link);
                return Err(HostError::Input(format!(
                    "{path}: {} links outside the allowed roots ({}); it is refused",
                    shown.strip_prefix(root).unwrap_or(&shown).display(),
                    self.list()
                )));
            }
        }
        Ok(Admitted {
            path: resolved,
            listing: Some(listing),
        })
    }

    #[cfg(not(unix))]
    fn root_of(&self, path: &Path) -> Option<&Path> {
        self.roots
            .iter()
            .find(|root| path.starts_with(root))
            .map(PathBuf::as_path)
    }
}

/// The error for a path that is neither a regular file nor a directory.
#[cfg(unix)]
fn not_regular(path: &str) -> HostError {
    HostError::Input(format!(
        "{path} is not a regular file or a directory (a FIFO, socket or device); it is refused"
    ))
}

/// A directory walk that reads nothing: it checks where the directory's links lead.
#[cfg(unix)]
struct Check;

#[cfg(unix)]
impl beneath::Visit for Check {
    fn file(&mut self, _relative: &Path, _file: fs::File) -> Result<(), HostError> {
        Ok(())
    }
    fn linked_dir(&mut self, _relative: &Path) {}
    fn unreadable(&mut self, _entry: String) {}
}

#[cfg(unix)]
impl beneath::Visit for Documents<'_> {
    fn file(&mut self, relative: &Path, file: fs::File) -> Result<(), HostError> {
        self.add(relative, file)
    }
    fn linked_dir(&mut self, relative: &Path) {
        self.linked_dirs.push(relative.display().to_string());
    }
    fn unreadable(&mut self, entry: String) {
        self.unreadable.push(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("rlm-host-context-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("temp dir: {e}"));
            Self(dir)
        }

        fn write(&self, relative: &str, bytes: &[u8]) {
            let path = self.0.join(relative);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir: {e}"));
            }
            fs::write(path, bytes).unwrap_or_else(|e| panic!("write: {e}"));
        }

        fn path(&self) -> &str {
            self.0.to_str().unwrap_or_default()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// [`load`] with the options spelled out, as the CLI's flags give them.
    fn load_as<P: AsRef<Path> + ?Sized>(
        spec: Option<&P>,
        format: ContextFormat,
        file_headers: bool,
        max_bytes: usize,
        stdin: impl Read,
    ) -> Result<Loaded, HostError> {
        let options = LoadOptions {
            format,
            file_headers,
            max_bytes,
        };
        load(spec, &options, stdin)
    }

    fn load_ok(spec: Option<&str>, format: ContextFormat, stdin: &[u8]) -> Loaded {
        load_as(spec, format, true, 0, stdin).unwrap_or_else(|e| panic!("load failed: {e}"))
    }

    #[test]
    fn no_context_is_an_empty_string() {
        let loaded = load_ok(None, ContextFormat::Auto, b"ignored");
        assert_eq!(loaded.context, Context::Text(String::new()));
        assert!(loaded.warnings.is_empty());
    }

    #[test]
    fn stdin_is_text_or_json_as_asked() {
        let text = load_ok(Some("-"), ContextFormat::Auto, b"{\"a\": 1}");
        assert_eq!(text.context, Context::Text("{\"a\": 1}".into()));
        let json = load_ok(Some("-"), ContextFormat::Json, b"{\"a\": 1}");
        assert_eq!(json.context, Context::Json(serde_json::json!({"a": 1})));
        let lines = load_ok(Some("-"), ContextFormat::Jsonl, b"1\n\n\"two\"\n");
        assert_eq!(lines.context, Context::Json(serde_json::json!([1, "two"])));
        let bad = load_as(Some("-"), ContextFormat::Jsonl, true, 0, &b"1\n{oops\n"[..]);
        let message = bad.map(|_| ()).unwrap_err().to_string();
        assert!(
            message.contains("line 2 column 2: key must be a string)"),
            "{message}"
        );
        // The file's line, not the line within that line (serde_json's "at line 1 ...").
        assert!(!message.contains("line 1"), "{message}");
    }

    /// What reading `bytes` whole gives: lossy UTF-8, a byte order mark removed, and whether
    /// a warning is due.
    fn decoded_whole(bytes: &[u8]) -> (String, bool) {
        let mut warnings = Vec::new();
        let text = decode(bytes.to_vec(), "input", &mut warnings);
        (text, !warnings.is_empty())
    }

    #[test]
    fn a_text_context_read_in_pieces_is_the_text_read_whole() {
        // Characters of 1 to 4 bytes, invalid bytes (a lone continuation, a lead without its
        // continuations, bytes never in UTF-8, a surrogate's encoding), unfinished characters
        // at the end, byte order marks: split at every place by pieces of 4 to 9 bytes.
        let inputs: [&[u8]; 12] = [
            b"",
            b"plain ascii, a few lines\nand more\n",
            "h\u{e9}llo w\u{f6}rld \u{20ac}100 \u{1f600} \u{10ffff}".as_bytes(),
            b"\xef\xbb\xbfafter a byte order mark",
            b"\xef\xbb\xbf",
            b"\xef\xbb",
            b"caf\xe9 ok \x80\x80 \xc0\xaf \xed\xa0\x80 \xf4\x90\x80\x80 \xff!",
            b"cut at the end \xe2\x82",
            b"cut at the end \xf0\x9f\x98",
            b"\xe2\x82\x41\xe2\x82\xac\xf0\x9f\x98\x80\xf0\x9f\x41",
            b"\xf0\x9f\x98\x80\x80\x80\x80\x80x",
            "\u{feff}\u{feff} two marks, the second kept".as_bytes(),
        ];
        for input in inputs {
            let (whole, lossy) = decoded_whole(input);
            for piece in 4..10 {
                let mut warnings = Vec::new();
                let context = read_text_context_by(input, "input", 0, &mut warnings, piece)
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(
                    context,
                    Context::Text(whole.clone()),
                    "{input:?} by {piece}"
                );
                assert_eq!(!warnings.is_empty(), lossy, "{input:?} by {piece}");
                let info = context.info();
                assert_eq!(
                    info,
                    Context::Text(whole.clone()).info(),
                    "{input:?} by {piece}"
                );
            }
        }
    }

    #[test]
    fn a_text_context_is_read_within_its_bound() {
        let mut warnings = Vec::new();
        let exact = read_text_context_by(&b"0123456789"[..], "input", 10, &mut warnings, 4);
        assert_eq!(exact.ok(), Some(Context::Text("0123456789".into())));
        let over = read_text_context_by(&b"0123456789x"[..], "input", 10, &mut warnings, 4);
        let message = over.map(|_| ()).unwrap_err().to_string();
        assert!(message.contains("--max-context-bytes"), "{message}");
        // An endless input stops at the bound.
        let endless = read_text_context_by(std::io::repeat(b'a'), "input", 1000, &mut warnings, 64);
        assert!(endless.is_err());
    }

    #[test]
    fn a_text_file_and_stdin_are_read_as_text_contexts() {
        let dir = TempDir::new("shared-text");
        dir.write("notes.txt", b"\xef\xbb\xbfone\ntwo caf\xe9\n");
        let path = format!("{}/notes.txt", dir.path());
        let loaded = load_ok(Some(&path), ContextFormat::Auto, b"");
        assert!(matches!(loaded.context, Context::Shared(_)));
        assert_eq!(
            loaded.context,
            Context::Text("one\ntwo caf\u{fffd}\n".into())
        );
        assert_eq!(loaded.warnings.len(), 1);
        assert_eq!(loaded.context.info().lines, Some(2));
        let stdin = load_ok(Some("-"), ContextFormat::Text, b"from stdin");
        assert!(matches!(stdin.context, Context::Shared(_)));
        assert_eq!(stdin.context, Context::Text("from stdin".into()));
    }

    #[test]
    fn invalid_utf8_is_replaced_with_a_warning() {
        let loaded = load_ok(Some("-"), ContextFormat::Text, b"caf\xe9 ok");
        assert_eq!(loaded.context, Context::Text("caf\u{fffd} ok".into()));
        assert_eq!(loaded.warnings.len(), 1);
    }

    #[test]
    fn json_files_by_extension_and_errors_name_the_file() {
        let dir = TempDir::new("json");
        dir.write("data.json", b"[\"a\", \"b\"]");
        dir.write("bad.json", b"{nope");
        dir.write("notes.txt", b"[1, 2]");
        let data = format!("{}/data.json", dir.path());
        let loaded = load_ok(Some(&data), ContextFormat::Auto, b"");
        assert_eq!(loaded.context, Context::Json(serde_json::json!(["a", "b"])));
        let notes = format!("{}/notes.txt", dir.path());
        assert_eq!(
            load_ok(Some(&notes), ContextFormat::Auto, b"").context,
            Context::Text("[1, 2]".into())
        );
        let bad = format!("{}/bad.json", dir.path());
        let error = load_as(Some(&bad), ContextFormat::Auto, true, 0, &b""[..]).unwrap_err();
        assert!(matches!(error, HostError::Input(_)));
        assert!(error.to_string().contains("bad.json"), "{error}");
        assert!(load_as(Some(&bad), ContextFormat::Text, true, 0, &b""[..]).is_ok());
    }

    #[test]
    fn a_byte_order_mark_is_removed_and_json_stays_exact() {
        let dir = TempDir::new("bom");
        dir.write(
            "data.json",
            b"\xef\xbb\xbf{\"n\": 123456789012345678901234567890}",
        );
        dir.write("notes.txt", b"\xef\xbb\xbfhello");
        dir.write(
            "rows.jsonl",
            b"\xef\xbb\xbf{\"n\": 1}\n{\"n\": 99999999999999999999}\n",
        );
        // Before: "not valid JSON (expected value at line 1 column 1)", and text kept the mark.
        let data = format!("{}/data.json", dir.path());
        assert_eq!(
            load_ok(Some(&data), ContextFormat::Auto, b"").context,
            Context::Json(serde_json::json!({"n": "123456789012345678901234567890"}))
        );
        let notes = format!("{}/notes.txt", dir.path());
        assert_eq!(
            load_ok(Some(&notes), ContextFormat::Auto, b"").context,
            Context::Text("hello".into())
        );
        let rows = format!("{}/rows.jsonl", dir.path());
        assert_eq!(
            load_ok(Some(&rows), ContextFormat::Auto, b"").context,
            Context::Json(serde_json::json!([{"n": 1}, {"n": "99999999999999999999"}]))
        );
        let docs = load_ok(Some(dir.path()), ContextFormat::Auto, b"").context;
        let Context::Documents(docs) = docs else {
            panic!("{docs:?}")
        };
        assert!(docs.iter().all(|d| !d.contains('\u{feff}')), "{docs:?}");
        let stdin = load_ok(Some("-"), ContextFormat::Json, b"\xef\xbb\xbf[1]").context;
        assert_eq!(stdin, Context::Json(serde_json::json!([1])));
    }

    #[test]
    fn a_missing_file_is_an_input_error() {
        let error = load_as(
            Some("/nonexistent/rlm/ctx.txt"),
            ContextFormat::Auto,
            true,
            0,
            &b""[..],
        )
        .unwrap_err();
        assert!(matches!(error, HostError::Input(_)));
        assert!(
            error.to_string().contains("/nonexistent/rlm/ctx.txt"),
            "{error}"
        );
    }

    #[test]
    fn directories_are_sorted_documents_without_hidden_or_binary_files() {
        let dir = TempDir::new("dir");
        dir.write("b.txt", b"bee");
        dir.write("a/z.txt", b"zed");
        dir.write("a/y.md", b"why \xff");
        dir.write(".git/config", b"hidden");
        dir.write(".hidden.txt", b"hidden");
        dir.write("img.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00");
        let loaded = load_ok(Some(dir.path()), ContextFormat::Auto, b"");
        assert_eq!(
            loaded.context,
            Context::Documents(vec![
                "==> a/y.md <==\nwhy \u{fffd}".into(),
                "==> a/z.txt <==\nzed".into(),
                "==> b.txt <==\nbee".into(),
            ])
        );
        assert_eq!(loaded.warnings.len(), 2, "{:?}", loaded.warnings);
        assert!(loaded.warnings[0].contains("a/y.md"));
        assert!(loaded.warnings[1].contains("img.png"));

        let bare = load_as(Some(dir.path()), ContextFormat::Auto, false, 0, &b""[..])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            bare.context,
            Context::Documents(vec!["why \u{fffd}".into(), "zed".into(), "bee".into()])
        );
        let json = load_as(Some(dir.path()), ContextFormat::Json, true, 0, &b""[..]);
        assert!(matches!(json, Err(HostError::Usage(_))));
    }

    #[cfg(unix)]
    #[test]
    fn broken_and_looping_links_are_reported_not_dropped_silently() {
        let dir = TempDir::new("links");
        dir.write("a.txt", b"kept");
        std::os::unix::fs::symlink(dir.0.join("missing.txt"), dir.0.join("dangling.txt"))
            .unwrap_or_else(|e| panic!("symlink: {e}"));
        std::os::unix::fs::symlink(dir.0.join("loop.txt"), dir.0.join("loop.txt"))
            .unwrap_or_else(|e| panic!("symlink: {e}"));
        let loaded = load_ok(Some(dir.path()), ContextFormat::Auto, b"");
        assert_eq!(
            loaded.context,
            Context::Documents(vec!["==> a.txt <==\nkept".into()])
        );
        let warnings = loaded.warnings.join("\n");
        assert!(
            warnings.contains("dangling.txt") && warnings.contains("loop.txt"),
            "{warnings}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn each_symlinked_directory_is_one_warning_line() {
        let dir = TempDir::new("linked-dirs");
        dir.write("a.txt", b"kept");
        dir.write("sub/b.txt", b"also kept");
        for link in ["link1", "sub/link2"] {
            std::os::unix::fs::symlink(dir.0.join("sub"), dir.0.join(link))
                .unwrap_or_else(|e| panic!("symlink: {e}"));
        }
        let loaded = load_ok(Some(dir.path()), ContextFormat::Auto, b"");
        let Context::Documents(documents) = &loaded.context else {
            panic!("documents expected: {:?}", loaded.context);
        };
        assert_eq!(documents.len(), 2, "links not followed: {documents:?}");
        let linked: Vec<&String> = loaded
            .warnings
            .iter()
            .filter(|w| w.contains("symlink to a directory"))
            .collect();
        assert_eq!(linked.len(), 2, "{:?}", loaded.warnings);
        assert!(linked[0].starts_with("skipped link1 in "), "{linked:?}");
        assert!(linked[1].starts_with("skipped sub/link2 in "), "{linked:?}");
    }

    #[test]
    fn lists_are_shortened() {
        let names: Vec<String> = (0..8).map(|i| format!("f{i}")).collect();
        assert_eq!(list(&names), "f0, f1, f2, f3, f4 and 3 more");
        assert_eq!(count(1, "file"), "1 file");
        assert_eq!(count(2, "entry"), "2 entries");
    }

    #[test]
    fn every_input_is_bounded_by_max_context_bytes() {
        // Before: /dev/zero or an endless pipe was read until an allocation failed.
        let endless = std::io::repeat(b'x');
        let error = load_as(Some("-"), ContextFormat::Auto, true, 1000, endless).unwrap_err();
        assert!(matches!(error, HostError::Input(_)));
        assert!(error.to_string().contains("--max-context-bytes"), "{error}");
        let mut warnings = Vec::new();
        let error = read_text(
            std::io::repeat(b'q'),
            "the query from stdin",
            10,
            &mut warnings,
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("the query from stdin"),
            "{error}"
        );
        #[cfg(unix)]
        {
            let error =
                read_text_file(Path::new("/dev/zero"), "query file", 1 << 20, &mut warnings)
                    .unwrap_err();
            assert!(error.to_string().contains("/dev/zero"), "{error}");
            let error = load_as(
                Some("/dev/zero"),
                ContextFormat::Auto,
                true,
                1 << 20,
                &b""[..],
            )
            .unwrap_err();
            assert!(matches!(error, HostError::Input(_)), "{error}");
        }
        // Exactly at the limit is fine.
        let loaded = load_as(Some("-"), ContextFormat::Auto, true, 3, &b"abc"[..])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.context, Context::Text("abc".to_owned()));
    }

    #[test]
    fn a_directory_counts_all_its_files_against_the_limit() {
        let dir = TempDir::new("bounded");
        dir.write("a.txt", &[b'a'; 600]);
        dir.write("b.txt", &[b'b'; 600]);
        let error =
            load_as(Some(dir.path()), ContextFormat::Auto, false, 1000, &b""[..]).unwrap_err();
        assert!(matches!(error, HostError::Input(_)));
        assert!(error.to_string().contains("--max-context-bytes"), "{error}");
        assert!(load_as(Some(dir.path()), ContextFormat::Auto, false, 1200, &b""[..]).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn a_context_directory_that_cannot_be_listed_is_an_input_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("unlistable");
        dir.write("a.txt", b"a");
        let _ = fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o300));
        // Root can list anything: nothing to show there.
        if fs::read_dir(dir.path()).is_ok() {
            let _ = fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755));
            return;
        }
        // Before: an empty context and exit 0.
        let error = load_as(Some(dir.path()), ContextFormat::Auto, true, 0, &b""[..]);
        let _ = fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755));
        let error = error.unwrap_err();
        assert!(matches!(error, HostError::Input(_)));
        assert!(error.to_string().contains("cannot list"), "{error}");
    }

    #[cfg(unix)]
    #[test]
    fn allowed_roots_load_only_what_lies_under_them() {
        let dir = TempDir::new("roots");
        dir.write("root/notes.txt", b"notes");
        dir.write("root/docs/a.txt", b"a");
        dir.write("root/bad/fine.txt", b"fine");
        dir.write("outside.txt", b"secret");
        std::os::unix::fs::symlink(dir.0.join("outside.txt"), dir.0.join("root/bad/evil.txt"))
            .unwrap_or_else(|e| panic!("symlink: {e}"));
        let roots = AllowedRoots::new(&[dir.0.join("root")]).unwrap_or_else(|e| panic!("{e}"));
        let options = LoadOptions {
            file_headers: false,
            ..LoadOptions::default()
        };

        let one = roots
            .load(&["docs".to_owned()], &options)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(one.context, Context::Documents(vec!["a".into()]));
        let several = roots
            .load(&["notes.txt".to_owned(), "docs".to_owned()], &options)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            several.context,
            Context::Documents(vec!["==> notes.txt <==\nnotes".into(), "a".into()])
        );

        // A directory with a link that leads out is refused as a whole, and nothing of a
        // list is read when one path is refused.
        for paths in [
            vec!["bad".to_owned()],
            vec!["notes.txt".to_owned(), "../outside.txt".to_owned()],
            Vec::new(),
        ] {
            let error = roots.load(&paths, &options).unwrap_err();
            assert!(matches!(error, HostError::Input(_)), "{paths:?}: {error}");
            assert!(!error.to_string().contains("secret"), "{error}");
        }
        assert!(AllowedRoots::new(&[]).is_err());
        assert!(AllowedRoots::new(&[dir.0.join("root/notes.txt")]).is_err());
    }

    /// Swaps `link` between pointing at `inside` and at `outside` (atomically, by renaming
    /// a fresh link over it) until `stop` is set; it ends pointing at `last`.
    #[cfg(unix)]
    fn swap_link(
        link: PathBuf,
        inside: PathBuf,
        outside: PathBuf,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        last: PathBuf,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let fresh = link.with_extension("swap");
            let point = |to: &Path| {
                let _ = fs::remove_file(&fresh);
                std::os::unix::fs::symlink(to, &fresh).unwrap_or_else(|e| panic!("symlink: {e}"));
                fs::rename(&fresh, &link).unwrap_or_else(|e| panic!("rename: {e}"));
            };
            let mut out = false;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                point(if out { &outside } else { &inside });
                out = !out;
            }
            point(&last);
        })
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_swapped_while_it_is_read_never_leads_outside_the_roots() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = TempDir::new("swap");
        dir.write("root/inside.txt", b"inside");
        dir.write("root/docs/a.txt", b"a");
        dir.write("outside.txt", b"secret");
        let root = dir.0.join("root");
        let roots =
            AllowedRoots::new(std::slice::from_ref(&root)).unwrap_or_else(|e| panic!("{e}"));
        let options = LoadOptions {
            file_headers: false,
            ..LoadOptions::default()
        };
        let inside = root.join("inside.txt");
        let outside = dir.0.join("outside.txt");
        for (link, asked) in [
            (root.join("swap.txt"), "swap.txt"),
            (root.join("docs/swap.txt"), "docs"),
        ] {
            std::os::unix::fs::symlink(&inside, &link).unwrap_or_else(|e| panic!("{e}"));
            let stop = Arc::new(AtomicBool::new(false));
            let swapper = swap_link(
                link.clone(),
                inside.clone(),
                outside.clone(),
                Arc::clone(&stop),
                inside.clone(),
            );
            // Before: checked by name, then opened again by name, so some reads followed
            // the link after it was swapped to the outside file.
            let mut leaked = 0;
            for _ in 0..3000 {
                if let Ok(loaded) = roots.load(&[asked.to_owned()], &options) {
                    if format!("{:?}", loaded.context).contains("secret") {
                        leaked += 1;
                    }
                }
            }
            stop.store(true, Ordering::Relaxed);
            swapper
                .join()
                .unwrap_or_else(|_| panic!("the swapper panicked"));
            assert_eq!(leaked, 0, "{asked}: {leaked} reads went outside the root");
            // At rest the link is read where it points, inside.
            let loaded = roots
                .load(&[asked.to_owned()], &options)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(
                format!("{:?}", loaded.context).contains("inside"),
                "{asked}"
            );
            fs::remove_file(&link).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_under_a_root_is_refused_without_waiting() {
        let dir = TempDir::new("fifo");
        dir.write("root/docs/a.txt", b"a");
        let status = std::process::Command::new("mkfifo")
            .arg(dir.0.join("root/pipe"))
            .arg(dir.0.join("root/docs/pipe"))
            .status()
            .unwrap_or_else(|e| panic!("mkfifo: {e}"));
        assert!(status.success());
        std::os::unix::fs::symlink(dir.0.join("root/pipe"), dir.0.join("root/link"))
            .unwrap_or_else(|e| panic!("symlink: {e}"));
        let roots = AllowedRoots::new(&[dir.0.join("root")]).unwrap_or_else(|e| panic!("{e}"));
        let options = LoadOptions {
            file_headers: false,
            ..LoadOptions::default()
        };
        // Before: opening the FIFO waited for a writer, forever.
        for path in ["pipe", "link"] {
            let error = roots.load(&[path.to_owned()], &options).unwrap_err();
            assert!(error.to_string().contains("not a regular file"), "{error}");
            assert!(roots.resolve(path).is_err(), "{path}");
        }
        let loaded = roots
            .load(&["docs".to_owned()], &options)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.context, Context::Documents(vec!["a".into()]));
        let warnings = loaded.warnings.join("\n");
        assert!(warnings.contains("pipe (not a regular file)"), "{warnings}");
    }
}
