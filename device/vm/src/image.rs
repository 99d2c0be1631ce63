//! The guest: a Debian kernel and an initramfs with busybox, iperf3 and the virtio modules.
//!
//! The kernel comes from `apt-get download` (so it is the distribution's stock build, not
//! one we configured); busybox-static and iperf3 with its libraries come from the host's
//! installed packages (the CI setup installs them). Everything is cached under the cache
//! directory, keyed by the package versions and the init script, so a second run starts
//! at once and a package upgrade rebuilds.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::cpio::{CpioWriter, Entry};

/// The guest's PID 1, kept in the repository so it can be read and changed like code.
pub const INIT_SCRIPT: &str = include_str!("../guest/init");

/// Modules the guest needs; their dependencies are found from the modules themselves.
pub const ROOT_MODULES: &[&str] = &["virtio_net", "virtio_pci", "virtio_mmio"];

/// Bump when the image layout changes, so cached images are rebuilt.
const LAYOUT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("`{cmd}` failed: {detail}")]
    Command { cmd: String, detail: String },
    #[error("apt knows no package {0} (run `apt-get update` as root?)")]
    NoPackage(String),
    #[error("kernel package {deb}: {detail}")]
    Kernel { deb: PathBuf, detail: String },
    #[error(
        "module {module} (needed by {needed_by}) is neither in the kernel package nor built in"
    )]
    MissingModule { module: String, needed_by: String },
    #[error("host file {path} for the guest: {detail} (install it with .ci/setup.sh)")]
    HostFile { path: PathBuf, detail: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let what = what.into();
    move |source| ImageError::Io { what, source }
}

#[derive(Debug, Clone)]
pub struct ImageOptions {
    pub cache_dir: PathBuf,
    /// A metapackage (resolved to the concrete image it depends on) or a concrete package.
    pub kernel_package: String,
    /// A kernel package file to use instead of asking apt.
    pub kernel_deb: Option<PathBuf>,
}

impl ImageOptions {
    pub fn new(cache_dir: PathBuf) -> Self {
        // The cloud flavour: smaller, boots faster under TCG, has virtio as modules.
        ImageOptions {
            cache_dir,
            kernel_package: "linux-image-cloud-amd64".into(),
            kernel_deb: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// e.g. "linux-image-6.1.0-56-cloud-amd64 6.1.192-2"
    pub kernel_package: String,
    pub modules: Vec<String>,
}

/// Builds the guest image, or returns the cached one.
pub fn prepare(opts: &ImageOptions) -> Result<GuestImage, ImageError> {
    let (pkg, version) = match &opts.kernel_deb {
        Some(deb) => deb_identity(deb)?,
        None => resolve_kernel_package(&opts.kernel_package)?,
    };
    let busybox = host_binary(&["/bin/busybox", "/usr/bin/busybox"])?;
    let iperf3 = host_binary(&["/usr/bin/iperf3", "/bin/iperf3"])?;
    let host_versions = ["iperf3", "libiperf0", "busybox-static"]
        .iter()
        .map(|p| format!("{p}={}", installed_version(p).unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(" ");
    let key_text = format!(
        "{LAYOUT_VERSION}\n{pkg}={version}\n{host_versions}\n{}\n{INIT_SCRIPT}",
        ROOT_MODULES.join(",")
    );
    let dir = opts
        .cache_dir
        .join(format!("guest-{:016x}", fnv1a(key_text.as_bytes())));
    let image = GuestImage {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initramfs.cpio"),
        kernel_package: format!("{pkg} {version}"),
        modules: Vec::new(),
    };
    if let Ok(list) = fs::read_to_string(dir.join("modules")) {
        if image.kernel.exists() && image.initrd.exists() {
            return Ok(GuestImage {
                modules: list.lines().map(String::from).collect(),
                ..image
            });
        }
    }

    let deb = match &opts.kernel_deb {
        Some(deb) => deb.clone(),
        None => {
            let debs = opts.cache_dir.join("debs");
            fs::create_dir_all(&debs).map_err(io_err(format!("creating {}", debs.display())))?;
            download(&debs, &pkg, &version)?
        }
    };

    let tmp = opts
        .cache_dir
        .join(format!("guest-tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let extract = tmp.join("deb");
    fs::create_dir_all(&extract).map_err(io_err(format!("creating {}", extract.display())))?;
    extract_kernel(&deb, &extract)?;
    let kernel = find_vmlinuz(&deb, &extract)?;
    let kmods = KernelModules::scan(&deb, &extract)?;
    let order = kmods.load_order(ROOT_MODULES)?;

    let mut cpio = Vec::new();
    build_initramfs(&mut cpio, &busybox, &iperf3, &kmods, &order)?;
    fs::write(tmp.join("initramfs.cpio"), &cpio).map_err(io_err("writing initramfs"))?;
    fs::copy(&kernel, tmp.join("vmlinuz")).map_err(io_err("copying the kernel"))?;
    fs::write(tmp.join("modules"), order.join("\n") + "\n").map_err(io_err("writing modules"))?;
    fs::write(tmp.join("key"), &key_text).map_err(io_err("writing key"))?;
    fs::remove_dir_all(&extract).map_err(io_err("removing the extracted package"))?;
    // Another runner may have finished the same image first: theirs is as good as ours.
    if fs::rename(&tmp, &dir).is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    Ok(GuestImage {
        modules: order,
        ..image
    })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn run(cmd: &mut Command) -> Result<String, ImageError> {
    run_bytes(cmd).map(|out| String::from_utf8_lossy(&out).into_owned())
}

/// Runs a command to completion; its stdout, or an error naming the command line.
fn run_bytes(cmd: &mut Command) -> Result<Vec<u8>, ImageError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ImageError::Command {
            cmd: shown.clone(),
            detail: if e.kind() == io::ErrorKind::NotFound {
                format!("{e} (install it with .ci/setup.sh)")
            } else {
                e.to_string()
            },
        })?;
    if !out.status.success() {
        return Err(ImageError::Command {
            cmd: shown,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(out.stdout)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn apt_update() -> Result<(), ImageError> {
    run(Command::new("apt-get").args(["update", "-qq"])).map(|_| ())
}

/// Follows a metapackage to the image it depends on; returns (package, candidate version).
fn resolve_kernel_package(name: &str) -> Result<(String, String), ImageError> {
    let lookup = || -> Result<Option<(String, String)>, ImageError> {
        let show = run(Command::new("apt-cache").args(["show", "--no-all-versions", name]));
        let Ok(show) = show else { return Ok(None) };
        let field = |f: &str| {
            show.lines()
                .find_map(|l| l.strip_prefix(f).map(|v| v.trim().to_string()))
        };
        let concrete = field("Depends:").and_then(|deps| {
            deps.split(',')
                .map(|d| d.split_whitespace().next().unwrap_or("").to_string())
                .find(|d| d.starts_with("linux-image-"))
        });
        match concrete {
            Some(pkg) => {
                let show =
                    run(Command::new("apt-cache").args(["show", "--no-all-versions", &pkg]))?;
                let version = show
                    .lines()
                    .find_map(|l| l.strip_prefix("Version:").map(|v| v.trim().to_string()));
                Ok(version.map(|v| (pkg, v)))
            }
            None => Ok(field("Version:").map(|v| (name.to_string(), v))),
        }
    };
    if let Some(found) = lookup()? {
        return Ok(found);
    }
    if is_root() {
        apt_update()?;
        if let Some(found) = lookup()? {
            return Ok(found);
        }
    }
    Err(ImageError::NoPackage(name.to_string()))
}

/// (Package, Version) from a package file's control fields: the cache key, and what the
/// summary names.
fn deb_identity(deb: &Path) -> Result<(String, String), ImageError> {
    let fields = run(Command::new("dpkg-deb")
        .args(["--field"])
        .arg(deb)
        .args(["Package", "Version"]))
    .map_err(|e| ImageError::Kernel {
        deb: deb.to_path_buf(),
        detail: e.to_string(),
    })?;
    let field = |name: &str| {
        fields.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        })
    };
    match (field("Package"), field("Version")) {
        (Some(p), Some(v)) if p.starts_with("linux-image-") => Ok((p, v)),
        (p, _) => Err(ImageError::Kernel {
            deb: deb.to_path_buf(),
            detail: format!(
                "not a linux-image-* package (Package: {})",
                p.unwrap_or_else(|| "none".into())
            ),
        }),
    }
}

fn installed_version(pkg: &str) -> Option<String> {
    run(Command::new("dpkg-query").args(["-W", "-f=${Version}", pkg])).ok()
}

fn host_binary(candidates: &[&str]) -> Result<PathBuf, ImageError> {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| ImageError::HostFile {
            path: PathBuf::from(candidates[0]),
            detail: "not found".into(),
        })
}

/// `apt-get download` into `debs` unless that version is there already.
fn download(debs: &Path, pkg: &str, version: &str) -> Result<PathBuf, ImageError> {
    // apt names the file with the epoch's ':' escaped.
    let name = format!("{pkg}_{}_amd64.deb", version.replace(':', "%3a"));
    let path = debs.join(&name);
    if path.is_file() {
        return Ok(path);
    }
    let spec = format!("{pkg}={version}");
    let attempt = || {
        run(Command::new("apt-get")
            .args(["download", "-qq", &spec])
            .current_dir(debs))
    };
    if let Err(first) = attempt() {
        // A fresh machine has no package lists yet.
        if !is_root() {
            return Err(first);
        }
        apt_update()?;
        attempt()?;
    }
    if path.is_file() {
        Ok(path)
    } else {
        Err(ImageError::Kernel {
            deb: path,
            detail: "apt-get download left no such file".into(),
        })
    }
}

/// Unpacks only the kernel image and the modules the guest may need.
fn extract_kernel(deb: &Path, into: &Path) -> Result<(), ImageError> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| ImageError::Command {
            cmd: "dpkg-deb".into(),
            detail: e.to_string(),
        })?;
    let tar_in = dpkg.stdout.take().expect("piped");
    let tar = Command::new("tar")
        .args(["-x", "-C"])
        .arg(into)
        .args([
            "--wildcards",
            "*/vmlinuz-*",
            "*/modules.builtin",
            // Plain, or compressed as newer kernel packages ship them (.ko.xz, .ko.zst);
            // one pattern each, since tar fails on a pattern that matches nothing.
            "*/virtio*.ko*",
            "*failover.ko*",
        ])
        .stdin(tar_in)
        .output();
    let dpkg_status = dpkg.wait();
    let tar = tar.map_err(|e| ImageError::Command {
        cmd: "tar".into(),
        detail: e.to_string(),
    })?;
    if !tar.status.success() || !dpkg_status.map(|s| s.success()).unwrap_or(false) {
        return Err(ImageError::Kernel {
            deb: deb.to_path_buf(),
            detail: format!(
                "extraction failed: {}",
                String::from_utf8_lossy(&tar.stderr).trim()
            ),
        });
    }
    Ok(())
}

fn find_vmlinuz(deb: &Path, root: &Path) -> Result<PathBuf, ImageError> {
    let boot = root.join("boot");
    let entries = fs::read_dir(&boot).map_err(io_err(format!("reading {}", boot.display())))?;
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .ok_or_else(|| ImageError::Kernel {
            deb: deb.to_path_buf(),
            detail: "no boot/vmlinuz-*".into(),
        })
}

/// The modules found in an unpacked kernel package, with their `depends=` lists.
pub struct KernelModules {
    /// name (dashes as underscores) -> (path, depends)
    pub modules: BTreeMap<String, (PathBuf, Vec<String>)>,
    pub builtin: BTreeSet<String>,
}

/// Compressions kernel packages use for modules, and the tool that undoes each.
const COMPRESSED: [(&str, &str); 2] = [(".ko.xz", "xz"), (".ko.zst", "zstd")];

fn module_name(file_name: &str) -> String {
    let stem = COMPRESSED
        .iter()
        .find_map(|(ext, _)| file_name.strip_suffix(ext))
        .unwrap_or(file_name);
    stem.trim_end_matches(".ko").replace('-', "_")
}

/// The plain module file for a directory entry: the `.ko` itself, or for a compressed
/// one the `.ko` written beside it (the guest's busybox `insmod` hands the file to
/// `init_module` as it is, which takes no compression). None: not a module.
fn module_file(path: &Path, name: &str) -> Result<Option<PathBuf>, ImageError> {
    if name.ends_with(".ko") {
        return Ok(Some(path.to_path_buf()));
    }
    let Some((ext, tool)) = COMPRESSED.iter().find(|(ext, _)| name.ends_with(ext)) else {
        return Ok(None);
    };
    let bytes = run_bytes(Command::new(tool).arg("-dc").arg(path))?;
    let plain = path.with_file_name(format!("{}.ko", name.trim_end_matches(ext)));
    fs::write(&plain, bytes).map_err(io_err(format!("writing {}", plain.display())))?;
    Ok(Some(plain))
}

impl KernelModules {
    fn scan(deb: &Path, root: &Path) -> Result<Self, ImageError> {
        let mut modules = BTreeMap::new();
        let mut builtin = BTreeSet::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let entries =
                fs::read_dir(&dir).map_err(io_err(format!("reading {}", dir.display())))?;
            for entry in entries {
                let path = entry.map_err(io_err("reading a directory entry"))?.path();
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("")
                    .to_string();
                if path.is_dir() {
                    stack.push(path);
                } else if let Some(ko) = module_file(&path, &name)? {
                    let bytes =
                        fs::read(&ko).map_err(io_err(format!("reading {}", ko.display())))?;
                    modules.insert(module_name(&name), (ko, modinfo_depends(&bytes)));
                } else if name == "modules.builtin" {
                    let text =
                        fs::read_to_string(&path).map_err(io_err("reading modules.builtin"))?;
                    builtin.extend(
                        text.lines()
                            .filter_map(|l| l.rsplit('/').next())
                            .map(module_name),
                    );
                }
            }
        }
        if modules.is_empty() && builtin.is_empty() {
            return Err(ImageError::Kernel {
                deb: deb.to_path_buf(),
                detail: "no modules found".into(),
            });
        }
        Ok(KernelModules { modules, builtin })
    }

    /// Dependencies before dependants; built-in modules left out.
    pub fn load_order(&self, roots: &[&str]) -> Result<Vec<String>, ImageError> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        fn visit(
            km: &KernelModules,
            name: &str,
            needed_by: &str,
            seen: &mut BTreeSet<String>,
            order: &mut Vec<String>,
        ) -> Result<(), ImageError> {
            if !seen.insert(name.to_string()) {
                return Ok(());
            }
            match km.modules.get(name) {
                Some((_, deps)) => {
                    for d in deps {
                        visit(km, d, name, seen, order)?;
                    }
                    order.push(name.to_string());
                    Ok(())
                }
                None if km.builtin.contains(name) => Ok(()),
                None => Err(ImageError::MissingModule {
                    module: name.to_string(),
                    needed_by: needed_by.to_string(),
                }),
            }
        }
        for r in roots {
            visit(self, r, "the guest", &mut seen, &mut order)?;
        }
        Ok(order)
    }
}

/// The `depends=` entry of a module's .modinfo section (NUL-separated key=value strings).
pub fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &ko[at + key.len()..];
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect()
}

/// Shared libraries `ldd` resolves for a binary (absolute paths, the loader included).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let out = run(Command::new("ldd").arg(binary))?;
    let mut libs = Vec::new();
    for line in out.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        } else if line.contains("not found") {
            return Err(ImageError::HostFile {
                path: binary.to_path_buf(),
                detail: line.to_string(),
            });
        }
    }
    Ok(libs)
}

struct Tree<W: Write> {
    cpio: CpioWriter<W>,
    dirs: BTreeSet<String>,
}

impl<W: Write> Tree<W> {
    fn dir(&mut self, path: &str) -> io::Result<()> {
        if path.is_empty() || self.dirs.contains(path) {
            return Ok(());
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.dirs.insert(path.to_string());
        self.cpio.add(&Entry::Dir { path })
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.cpio.add(&Entry::File { path, mode, data })
    }

    fn host_file(&mut self, path: &str, host: &Path) -> Result<(), ImageError> {
        let data = fs::read(host).map_err(io_err(format!("reading {}", host.display())))?;
        self.file(path, 0o755, &data)
            .map_err(io_err("writing the initramfs"))
    }
}

fn build_initramfs<W: Write>(
    out: W,
    busybox: &Path,
    iperf3: &Path,
    kmods: &KernelModules,
    order: &[String],
) -> Result<(), ImageError> {
    let mut t = Tree {
        cpio: CpioWriter::new(out),
        dirs: BTreeSet::new(),
    };
    let w = io_err("writing the initramfs");
    for d in ["dev", "proc", "sys", "tmp", "etc", "bin", "lib/modules"] {
        t.dir(d).map_err(io_err("writing the initramfs"))?;
    }
    // Without /dev/console in the archive PID 1 starts with no stdin/stdout/stderr.
    t.cpio
        .add(&Entry::CharDev {
            path: "dev/console",
            major: 5,
            minor: 1,
        })
        .map_err(w)?;
    t.file("init", 0o755, INIT_SCRIPT.as_bytes())
        .map_err(io_err("writing the initramfs"))?;
    t.host_file("bin/busybox", busybox)?;
    t.cpio
        .add(&Entry::Symlink {
            path: "bin/sh",
            target: "busybox",
        })
        .map_err(io_err("writing the initramfs"))?;
    t.host_file("bin/iperf3", iperf3)?;
    for lib in shared_libraries(iperf3)? {
        let inside = lib.to_string_lossy().trim_start_matches('/').to_string();
        t.host_file(&inside, &lib)?;
    }
    for m in order {
        let (path, _) = &kmods.modules[m];
        t.host_file(&format!("lib/modules/{m}.ko"), path)?;
    }
    t.file(
        "etc/vnet-modules",
        0o644,
        (order.join("\n") + "\n").as_bytes(),
    )
    .map_err(io_err("writing the initramfs"))?;
    t.cpio.finish().map_err(io_err("writing the initramfs"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_depends_from_modinfo() {
        let ko =
            b"\x7fELF junk\0license=GPL\0depends=virtio_ring,virtio,net-failover\0retpoline=Y\0";
        assert_eq!(
            modinfo_depends(ko),
            ["virtio_ring", "virtio", "net_failover"]
        );
        assert!(modinfo_depends(b"\0depends=\0").is_empty());
        assert!(modinfo_depends(b"no modinfo here").is_empty());
    }

    fn km(mods: &[(&str, &[&str])], builtin: &[&str]) -> KernelModules {
        KernelModules {
            modules: mods
                .iter()
                .map(|(n, d)| {
                    (
                        n.to_string(),
                        (PathBuf::from(n), d.iter().map(|s| s.to_string()).collect()),
                    )
                })
                .collect(),
            builtin: builtin.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn load_order_puts_dependencies_first_and_skips_builtins() {
        let k = km(
            &[
                ("virtio_net", &["virtio_ring", "virtio", "net_failover"]),
                ("net_failover", &["failover"]),
                ("failover", &[]),
                ("virtio", &["virtio_ring"]),
                ("virtio_ring", &[]),
                ("virtio_pci", &["virtio", "virtio_ring", "pci_core"]),
            ],
            &["pci_core"],
        );
        let order = k.load_order(&["virtio_net", "virtio_pci"]).unwrap();
        let pos = |m: &str| order.iter().position(|x| x == m).unwrap();
        assert!(pos("virtio_ring") < pos("virtio"));
        assert!(pos("virtio") < pos("virtio_net"));
        assert!(pos("failover") < pos("net_failover"));
        assert!(pos("net_failover") < pos("virtio_net"));
        assert!(pos("virtio_net") < pos("virtio_pci"));
        assert_eq!(order.len(), 6);
        assert!(!order.contains(&"pci_core".to_string()));
    }

    fn compress(tool: &str, path: &Path) {
        let st = Command::new(tool)
            .arg("-q")
            .arg(path)
            .status()
            .unwrap_or_else(|e| panic!("{tool} (installed by .ci/setup.sh): {e}"));
        assert!(st.success(), "{tool} {}", path.display());
    }

    #[test]
    fn scans_plain_xz_and_zstd_modules_alike() {
        let root = std::env::temp_dir().join(format!("vnet-kmods-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = root.join("lib/modules/6.1.0/kernel/drivers/net");
        fs::create_dir_all(&dir).unwrap();
        let net = b"\x7fELF\0depends=virtio,net-failover\0".to_vec();
        let failover = b"\x7fELF\0depends=failover\0".to_vec();
        fs::write(dir.join("virtio_net.ko"), &net).unwrap();
        fs::write(dir.join("net_failover.ko"), &failover).unwrap();
        compress("xz", &dir.join("virtio_net.ko"));
        compress("zstd", &dir.join("net_failover.ko"));
        // zstd keeps its input: drop it, so the scan sees only the compressed file.
        fs::remove_file(dir.join("net_failover.ko")).unwrap();
        fs::write(dir.join("virtio.ko"), b"\x7fELF\0depends=\0").unwrap();
        assert!(dir.join("virtio_net.ko.xz").exists() && !dir.join("virtio_net.ko").exists());
        let k = KernelModules::scan(Path::new("test.deb"), &root).unwrap();
        let names: Vec<&str> = k.modules.keys().map(|s| s.as_str()).collect();
        assert_eq!(names, ["net_failover", "virtio", "virtio_net"]);
        let (path, deps) = &k.modules["virtio_net"];
        assert_eq!(deps, &["virtio", "net_failover"]);
        assert_eq!(
            fs::read(path).unwrap(),
            net,
            "the guest gets the plain module"
        );
        assert_eq!(path.file_name().unwrap(), "virtio_net.ko");
        let (path, deps) = &k.modules["net_failover"];
        assert_eq!(deps, &["failover"]);
        assert_eq!(fs::read(path).unwrap(), failover);
        // A damaged archive names the tool and the file.
        fs::write(dir.join("bad.ko.xz"), b"not xz").unwrap();
        let err = KernelModules::scan(Path::new("test.deb"), &root)
            .err()
            .expect("a corrupt module is an error")
            .to_string();
        assert!(err.contains("xz -dc") && err.contains("bad.ko.xz"), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }

    fn fake_deb(dir: &Path, package: &str) -> PathBuf {
        let root = dir.join(package);
        fs::create_dir_all(root.join("DEBIAN")).unwrap();
        fs::write(
            root.join("DEBIAN/control"),
            format!(
                "Package: {package}\nVersion: 6.12.117-1\nArchitecture: amd64\n\
                 Maintainer: test <t@example.org>\nDescription: test\n"
            ),
        )
        .unwrap();
        let deb = dir.join(format!("{package}.deb"));
        let st = Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group", "-Zgzip"])
            .arg(&root)
            .arg(&deb)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        deb
    }

    #[test]
    fn a_kernel_deb_names_its_package_and_version() {
        let dir = std::env::temp_dir().join(format!("vnet-kdeb-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let deb = fake_deb(&dir, "linux-image-6.12.117+deb13-cloud-amd64");
        assert_eq!(
            deb_identity(&deb).unwrap(),
            (
                "linux-image-6.12.117+deb13-cloud-amd64".to_string(),
                "6.12.117-1".to_string()
            )
        );
        let other = fake_deb(&dir, "iperf3");
        let err = deb_identity(&other).unwrap_err().to_string();
        assert!(
            err.contains("iperf3.deb") && err.contains("not a linux-image-*"),
            "{err}"
        );
        let err = deb_identity(&dir.join("missing.deb"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.deb"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_order_names_a_missing_module_and_who_needs_it() {
        let k = km(&[("virtio_net", &["virtio"])], &[]);
        let err = k.load_order(&["virtio_net"]).unwrap_err().to_string();
        assert!(
            err.contains("virtio") && err.contains("needed by virtio_net"),
            "{err}"
        );
    }
}
