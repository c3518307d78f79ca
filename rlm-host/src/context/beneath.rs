//! Opening paths under a root by handle.
//!
//! Every step of a path is opened relative to the directory handle before it, never
//! following a symlink by name (`O_NOFOLLOW`). A symlink met on the way is read and its
//! target resolved the same way, from the directory that holds it, and only while it stays
//! under a root. So what was checked is the very file that is read: a symlink swapped in
//! between cannot lead the read elsewhere. Every open is non-blocking, so a FIFO or a
//! device never makes it wait; callers read only what [`Opened::kind`] says is a regular
//! file.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

/// The most symlinks followed while resolving one path (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// A root: its resolved path and a handle on the directory.
#[derive(Debug)]
pub(super) struct Root {
    path: PathBuf,
    fd: OwnedFd,
}

impl Root {
    /// Opens the directory at `path` (a resolved path).
    pub(super) fn open(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            path: path.to_path_buf(),
            fd,
        })
    }
}

/// A directory under a root: the root's index and the open directories below it.
#[derive(Debug, Clone)]
pub(super) struct Place {
    root: usize,
    dirs: Vec<(Arc<OwnedFd>, OsString)>,
}

impl Place {
    /// The root itself.
    pub(super) fn root(root: usize) -> Self {
        Self {
            root,
            dirs: Vec::new(),
        }
    }

    fn fd<'a>(&'a self, roots: &'a [Root]) -> &'a OwnedFd {
        self.dirs
            .last()
            .map_or(&roots[self.root].fd, |(fd, _)| fd.as_ref())
    }

    /// Where it is, for messages: the root's path and the names below it.
    pub(super) fn path(&self, roots: &[Root]) -> PathBuf {
        let mut path = roots[self.root].path.clone();
        path.extend(self.dirs.iter().map(|(_, name)| name));
        path
    }
}

/// Why a path could not be opened under the roots.
#[derive(Debug)]
pub(super) enum Failure {
    /// It leads outside every root (through `..` or a symlink).
    Outside,
    /// The file system said no (missing, unreadable, a loop of links...).
    Io(io::Error),
}

impl From<Errno> for Failure {
    fn from(errno: Errno) -> Self {
        Failure::Io(errno.into())
    }
}

/// What a path led to, opened.
#[derive(Debug)]
pub(super) struct Opened {
    /// The directory that holds it (for a path that ends at a directory by `.` or `..`,
    /// that directory itself, and `name` is `None`).
    pub(super) parent: Place,
    /// Its name in `parent`.
    pub(super) name: Option<OsString>,
    /// The open handle (non-blocking, read-only).
    pub(super) fd: OwnedFd,
    /// What the handle is.
    pub(super) kind: FileType,
}

impl Opened {
    /// Its resolved path, for messages.
    pub(super) fn path(&self, roots: &[Root]) -> PathBuf {
        let mut path = self.parent.path(roots);
        if let Some(name) = &self.name {
            path.push(name);
        }
        path
    }

    /// A directory's place, to walk it from.
    pub(super) fn into_place(self) -> Place {
        let mut place = self.parent;
        if let Some(name) = self.name {
            place.dirs.push((Arc::new(self.fd), name));
        }
        place
    }
}

/// The root `path` lies under lexically, and the rest of it.
pub(super) fn under<'a>(roots: &[Root], path: &'a Path) -> Option<(usize, &'a Path)> {
    roots
        .iter()
        .enumerate()
        .find_map(|(index, root)| path.strip_prefix(&root.path).ok().map(|rest| (index, rest)))
}

/// The steps of a relative path: names and `..` (`.` dropped).
fn steps(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// The flags of every open: read-only, never following a symlink, never waiting.
fn flags() -> OFlags {
    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC
}

/// What an open handle is.
fn kind_of(fd: &OwnedFd) -> Result<FileType, Failure> {
    Ok(FileType::from_raw_mode(rustix::fs::fstat(fd)?.st_mode))
}

/// Opens the relative `path` from `start`, resolving each step by handle: `..` never
/// climbs above a root, and a symlink is followed only to a target under a root.
pub(super) fn open(roots: &[Root], start: Place, path: &Path) -> Result<Opened, Failure> {
    let mut place = start;
    let mut pending = steps(path);
    let mut links = 0usize;
    loop {
        let Some(name) = pending.pop_front() else {
            let fd = place.fd(roots).try_clone().map_err(Failure::Io)?;
            let kind = kind_of(&fd)?;
            return Ok(Opened {
                parent: place,
                name: None,
                fd,
                kind,
            });
        };
        if name == ".." {
            if place.dirs.pop().is_none() {
                return Err(Failure::Outside);
            }
            continue;
        }
        let last = pending.is_empty();
        let mut oflags = flags();
        if !last {
            oflags |= OFlags::DIRECTORY;
        }
        let error =
            match rustix::fs::openat(place.fd(roots), name.as_os_str(), oflags, Mode::empty()) {
                Ok(fd) if last => {
                    let kind = kind_of(&fd)?;
                    return Ok(Opened {
                        parent: place,
                        name: Some(name),
                        fd,
                        kind,
                    });
                }
                Ok(fd) => {
                    place.dirs.push((Arc::new(fd), name));
                    continue;
                }
                Err(error) => error,
            };
        // `O_NOFOLLOW` refuses a symlink (ELOOP; EMLINK on some BSDs; ENOTDIR with
        // `O_DIRECTORY` on some systems): read the link and resolve its target.
        if !matches!(error, Errno::LOOP | Errno::MLINK | Errno::NOTDIR) {
            return Err(error.into());
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(Errno::LOOP.into());
        }
        let target = match rustix::fs::readlinkat(place.fd(roots), name.as_os_str(), Vec::new()) {
            Ok(target) => PathBuf::from(OsStr::from_bytes(target.as_bytes())),
            // No longer a symlink (swapped since the open): try the step again.
            Err(Errno::INVAL) if error != Errno::NOTDIR => {
                pending.push_front(name);
                continue;
            }
            Err(_) => return Err(error.into()),
        };
        let rest = if target.is_absolute() {
            let Some((index, rest)) = under(roots, &target) else {
                return Err(Failure::Outside);
            };
            place = Place::root(index);
            steps(rest)
        } else {
            steps(&target)
        };
        for step in rest.into_iter().rev() {
            pending.push_front(step);
        }
    }
}

/// What a walk finds, told as it goes.
pub(super) trait Visit {
    /// A regular file at `relative` (under the walked directory), opened.
    fn file(&mut self, relative: &Path, file: std::fs::File) -> Result<(), super::HostError>;
    /// A symlink to a directory (not followed).
    fn linked_dir(&mut self, relative: &Path);
    /// An entry that could not be read, with why.
    fn unreadable(&mut self, entry: String);
}

/// Why a walk stopped.
#[derive(Debug)]
pub(super) enum WalkError {
    /// A symlink at this relative path leads outside the roots.
    LinkOutside(PathBuf),
    /// The visitor refused to go on.
    Visit(super::HostError),
}

/// Walks the directory at `place` by handle, in byte order of the names, skipping names
/// that start with `.`: directories are walked, regular files (and symlinks to regular
/// files under a root) visited, symlinks to directories reported, anything else unreadable.
pub(super) fn walk(
    roots: &[Root],
    place: &Place,
    relative: &Path,
    visit: &mut dyn Visit,
) -> Result<(), WalkError> {
    let fd = place.fd(roots);
    let mut names = Vec::new();
    let listed = Dir::read_from(fd).and_then(|dir| {
        for entry in dir {
            let entry = entry?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if !name.as_bytes().starts_with(b".") {
                names.push(name.to_os_string());
            }
        }
        Ok(())
    });
    if let Err(e) = listed {
        let shown = if relative.as_os_str().is_empty() {
            ".".to_owned()
        } else {
            relative.display().to_string()
        };
        visit.unreadable(format!("{shown} ({})", io::Error::from(e)));
        return Ok(());
    }
    names.sort();
    for name in names {
        let path = relative.join(&name);
        let opened = match rustix::fs::openat(fd, name.as_os_str(), flags(), Mode::empty()) {
            Ok(fd) => kind_of(&fd).map(|kind| (fd, kind, false)),
            Err(Errno::LOOP | Errno::MLINK) => match open(roots, place.clone(), Path::new(&name)) {
                Ok(opened) => Ok((opened.fd, opened.kind, true)),
                Err(Failure::Outside) => return Err(WalkError::LinkOutside(path)),
                Err(failure) => Err(failure),
            },
            Err(error) => Err(error.into()),
        };
        match opened {
            Ok((fd, FileType::Directory, false)) => {
                let mut below = place.clone();
                below.dirs.push((Arc::new(fd), name));
                walk(roots, &below, &path, visit)?;
            }
            Ok((_, FileType::Directory, true)) => visit.linked_dir(&path),
            Ok((fd, FileType::RegularFile, _)) => visit
                .file(&path, std::fs::File::from(fd))
                .map_err(WalkError::Visit)?,
            Ok(_) => visit.unreadable(format!("{} (not a regular file)", path.display())),
            Err(Failure::Io(e)) => visit.unreadable(format!("{} ({e})", path.display())),
            Err(Failure::Outside) => return Err(WalkError::LinkOutside(path)),
        }
    }
    Ok(())
}
