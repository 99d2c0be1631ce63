//! Where results go: never onto an input, and never a half-written file.
//!
//! `analyze chrome trace.csv -o trace.csv` once truncated its own input before reading it. An
//! output that is an input (same device and inode, so also through a symlink or hard link) is
//! refused before anything is opened for writing, and a file output is written to a temporary
//! file in the destination's directory and renamed over the destination only on success: a
//! failed or interrupted run leaves the old file (or none) in place.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::input::display_name;

/// Device and inode: what makes two paths the same file.
#[cfg(unix)]
fn identity(meta: &fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn identity(_meta: &fs::Metadata) -> Option<(u64, u64)> {
    None
}

/// The input (as named by the user) that is the same file as `meta`, if any. `-` (stdin) and
/// inputs that cannot be stat'ed (reading them reports that) are skipped.
fn input_matching(meta: &fs::Metadata, inputs: &[PathBuf]) -> Option<String> {
    let id = identity(meta)?;
    inputs
        .iter()
        .filter(|p| p.as_os_str() != "-")
        .find(|p| fs::metadata(p).ok().and_then(|m| identity(&m)) == Some(id))
        .map(|p| display_name(p))
}

/// Refuses when `output` already exists as one of `inputs`.
pub fn check_not_input(output: &Path, inputs: &[PathBuf]) -> Result<(), Error> {
    let Ok(meta) = fs::metadata(output) else {
        return Ok(()); // does not exist yet: cannot be an input
    };
    match input_matching(&meta, inputs) {
        Some(input) => Err(Error::OutputIsInput {
            output: output.display().to_string(),
            input,
        }),
        None => Ok(()),
    }
}

/// Refuses when standard output is redirected into one of `inputs` (`>> trace.csv` would make
/// a streaming command read its own output forever; `>` has already emptied it).
pub fn check_stdout_not_input(inputs: &[PathBuf]) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        let Ok(fd) = io::stdout().as_fd().try_clone_to_owned() else {
            return Ok(()); // stdout closed: nothing to protect
        };
        let Ok(meta) = File::from(fd).metadata() else {
            return Ok(());
        };
        if !meta.is_file() {
            return Ok(()); // a terminal or a pipe
        }
        if let Some(input) = input_matching(&meta, inputs) {
            return Err(Error::OutputIsInput {
                output: "standard output".to_string(),
                input,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = inputs;
    Ok(())
}

/// A file being written. Dropped without [`OutputFile::commit`], it leaves the destination as
/// it was (the temporary file is removed).
pub struct OutputFile {
    name: String,
    sink: Sink,
}

enum Sink {
    /// A regular file (new or replaced): written beside it, renamed over it on commit.
    Temp {
        file: tempfile::NamedTempFile,
        dest: PathBuf,
    },
    /// A device or FIFO (`-o /dev/stdout`): written in place; renaming over it would replace
    /// the device node itself.
    Direct(File),
}

impl OutputFile {
    /// Prepares to write `path`, refusing when it is one of `inputs`.
    pub fn create(path: &Path, inputs: &[PathBuf]) -> Result<OutputFile, Error> {
        let name = path.display().to_string();
        check_not_input(path, inputs)?;
        let io_err = |e| Error::io(&name, e);
        // Through a symlink, replace the file it points to and keep the link.
        let dest = match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => match fs::canonicalize(path) {
                Ok(target) => target,
                Err(_) => path.to_path_buf(), // dangling: the rename replaces the link
            },
            _ => path.to_path_buf(),
        };
        let existing = fs::metadata(&dest).ok();
        if let Some(m) = &existing {
            if !m.is_file() && !m.is_dir() {
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(&dest)
                    .map_err(io_err)?;
                return Ok(OutputFile {
                    name,
                    sink: Sink::Direct(file),
                });
            }
        }
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prefix = format!(".{file_name}.");
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".tmp");
        // A replaced file keeps its mode; a new one gets the usual 0666 less the umask.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = existing.as_ref().map_or(0o666, |m| m.permissions().mode());
            builder.permissions(fs::Permissions::from_mode(mode & 0o7777));
        }
        let file = builder.tempfile_in(&dir).map_err(io_err)?;
        Ok(OutputFile {
            name,
            sink: Sink::Temp { file, dest },
        })
    }

    /// The name for messages (the path as given).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Flushes and moves the finished file into place.
    pub fn commit(self) -> Result<(), Error> {
        let name = self.name;
        match self.sink {
            Sink::Temp { file, dest } => {
                // Durable before the rename, so a crash leaves the old file, not an empty one.
                file.as_file().sync_all().map_err(|e| Error::io(&name, e))?;
                file.persist(&dest).map_err(|e| Error::io(&name, e.error))?;
            }
            Sink::Direct(mut file) => file.flush().map_err(|e| Error::io(&name, e))?,
        }
        Ok(())
    }
}

impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.sink {
            Sink::Temp { file, .. } => file.write(buf),
            Sink::Direct(file) => file.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.sink {
            Sink::Temp { file, .. } => file.write_all(buf),
            Sink::Direct(file) => file.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::Temp { file, .. } => file.flush(),
            Sink::Direct(file) => file.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(unix)]
    use std::os::unix::fs::FileTypeExt;

    fn scratch(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("analyze-output-{name}-"))
            .tempdir()
            .unwrap()
    }

    #[test]
    fn same_file_is_refused_by_path_link_and_hard_link() {
        let dir = scratch("same");
        let input = dir.path().join("trace.csv");
        fs::write(&input, "data").unwrap();
        let inputs = vec![PathBuf::from("-"), input.clone()];
        let link = dir.path().join("link.csv");
        #[cfg(unix)]
        std::os::unix::fs::symlink(&input, &link).unwrap();
        let hard = dir.path().join("hard.csv");
        fs::hard_link(&input, &hard).unwrap();
        for out in [&input, &link, &hard] {
            let err = OutputFile::create(out, &inputs).err().expect("refused");
            assert!(
                matches!(err, Error::OutputIsInput { .. }),
                "{}: {err}",
                out.display()
            );
            assert_eq!(err.exit_code(), 2);
        }
        assert_eq!(fs::read_to_string(&input).unwrap(), "data");
        // Named as a link on the input side too.
        let err = check_not_input(&input, std::slice::from_ref(&link)).unwrap_err();
        assert!(err.to_string().contains("link.csv"), "{err}");
    }

    #[test]
    fn nothing_changes_until_commit_and_a_dropped_output_leaves_no_file() {
        let dir = scratch("commit");
        let out = dir.path().join("out.json");
        fs::write(&out, "old").unwrap();
        let mut f = OutputFile::create(&out, &[]).unwrap();
        f.write_all(b"new contents").unwrap();
        assert_eq!(fs::read_to_string(&out).unwrap(), "old");
        drop(f);
        assert_eq!(fs::read_to_string(&out).unwrap(), "old");
        let leftovers = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "the temporary file was removed");
        let mut f = OutputFile::create(&out, &[]).unwrap();
        f.write_all(b"new contents").unwrap();
        f.commit().unwrap();
        assert_eq!(fs::read_to_string(&out).unwrap(), "new contents");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn a_symlinked_output_replaces_its_target_and_keeps_the_link() {
        let dir = scratch("symlink");
        let target = dir.path().join("real.json");
        fs::write(&target, "old").unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let mut f = OutputFile::create(&link, &[]).unwrap();
        f.write_all(b"new").unwrap();
        f.commit().unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(&target).unwrap(), "new");
    }

    /// A FIFO stands for any non-regular destination (`/dev/stdout`, a device): written in
    /// place, never renamed over. (Not tried on /dev/null itself: if it were ever missing,
    /// the test would create it as a regular file.)
    #[cfg(unix)]
    #[test]
    fn a_fifo_is_written_in_place() {
        use std::io::Read;
        use std::os::unix::ffi::OsStrExt;
        let dir = scratch("fifo");
        let fifo = dir.path().join("pipe");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only reads it.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let reader_path = fifo.clone();
        let reader = std::thread::spawn(move || {
            let mut got = String::new();
            File::open(reader_path)
                .unwrap()
                .read_to_string(&mut got)
                .unwrap();
            got
        });
        let mut f = OutputFile::create(&fifo, &[]).unwrap();
        f.write_all(b"through the pipe").unwrap();
        f.commit().unwrap();
        assert_eq!(reader.join().unwrap(), "through the pipe");
        assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
