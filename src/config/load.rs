//! The only code that reads operator files: space files, zone files and certificates.
//!
//! `parse_*` functions take text and a path to name in diagnostics, so tests never need a file;
//! `load_*` wrap them with the file system. The model is filled by the fast reader in `yaml.rs`
//! when the file is in the plain block style it reads, and by serde_yaml otherwise (serde_yaml
//! also gives syntax errors their position). yaml-rust2's event parser records where each entry
//! starts, only once `validate` needs to point at the line of a bad value.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use hickory_proto::rr::{Name, RecordSet, RrKey};
use hickory_proto::serialize::txt::Parser;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser as EventParser};
use yaml_rust2::scanner::Marker;

use super::Diagnostic;
use super::model::{Audience, SpaceFile};

/// A space file as read from disk, with what it refers to, ready for `validate`.
#[derive(Debug, Clone)]
pub struct Source {
    /// The space file.
    pub path: PathBuf,
    /// What it says.
    pub file: SpaceFile,
    /// Where each entry of it is.
    pub positions: Positions,
    /// Its zone files, in the order of `zones`; `None` where one could not be read or parsed.
    pub zones: Vec<Option<ZoneText>>,
    /// Its apps' certificate pairs as (cert PEM, key PEM), in the order of `apps`.
    pub certs: Vec<Option<(Vec<u8>, Vec<u8>)>>,
    /// Its secondaries' key files, in the order of `secondaries`; `None` where unreadable.
    pub keys: Vec<Option<Vec<u8>>>,
    /// A hash of the space file's text ([`content_hash`]).
    pub hash: u64,
    /// The files it names (zone files, certificates), each with a hash of its bytes, `None`
    /// where it could not be read: with `hash`, what a reload compares to know the space is
    /// unchanged.
    pub named: Vec<(PathBuf, Option<u64>)>,
}

/// A hash of a file's bytes, to tell whether it changed between two loads of one process.
pub fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::default().hash_one(bytes)
}

/// The [`content_hash`] of the file at `path`, `None` when it cannot be read.
pub fn file_hash(path: &Path) -> Option<u64> {
    fs::read(path).ok().map(|bytes| content_hash(&bytes))
}

/// A parsed zone file.
#[derive(Debug, Clone)]
pub struct ZoneText {
    /// The zone file's path.
    pub path: PathBuf,
    /// The origin in effect when the file was parsed.
    pub origin: Name,
    /// The records.
    pub records: BTreeMap<RrKey, RecordSet>,
    /// The file's text, to place a diagnostic about one of its records.
    pub text: String,
}

impl ZoneText {
    /// The line of the first record that `wanted` picks out, found as the shortest prefix of
    /// whole records whose parse holds one; line 1 when none does.
    pub fn line_of(&self, wanted: impl Fn(&RrKey) -> bool) -> usize {
        let parses_one = |end: usize| {
            Parser::new(
                &self.text[..end],
                Some(self.path.clone()),
                Some(self.origin.clone()),
            )
            .parse()
            .is_ok_and(|(_, records)| records.keys().any(&wanted))
        };
        let cuts = record_ends(&self.text);
        let first = cuts.partition_point(|&end| !parses_one(end));
        if first == cuts.len() {
            return 1;
        }
        let start = if first == 0 { 0 } else { cuts[first - 1] };
        first_record_line(&self.text, start)
    }
}

/// Reads every `*.yaml` / `*.yml` file in `dir` (not below it), sorted by name, with the zone
/// files and certificates they name. Returns what could be read and a diagnostic for the rest.
pub fn load_sources(dir: &Path) -> (Vec<Source>, Vec<Diagnostic>) {
    match space_paths(dir) {
        Ok(paths) => load_paths(&paths),
        Err(d) => (Vec::new(), vec![d]),
    }
}

/// The space files of `dir`: every `*.yaml` / `*.yml` file in it (not below it), sorted.
pub fn space_paths(dir: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let entries =
        fs::read_dir(dir).map_err(|e| at(dir, 1, 1, format!("cannot read directory: {e}")))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    paths.sort();
    Ok(paths)
}

/// Reads the space files at `paths` with the files they name, in parallel; the sources and
/// diagnostics come out in the order of `paths`.
pub fn load_paths(paths: &[PathBuf]) -> (Vec<Source>, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();

    // Space files parse independently: one thread per core, each taking every n-th file, and
    // the results put back in file order so that diagnostics and spaces come out the same.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = threads.clamp(1, paths.len().max(1));
    let mut loaded: Vec<(usize, LoadedSpace)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (paths.iter().enumerate().skip(t).step_by(threads))
                        .map(|(i, path)| (i, load_space(path)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        (workers.into_iter())
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    loaded.sort_by_key(|(i, _)| *i);
    let mut sources = Vec::new();
    for (_, source) in loaded {
        match source {
            Ok(source) => {
                sources.push(source.0);
                diagnostics.extend(source.1);
            }
            Err(d) => diagnostics.push(d),
        }
    }
    (sources, diagnostics)
}

/// Parses in-memory space files and the files they refer to, for tests, fuzzing and benches:
/// `files` are (path, YAML) pairs and `others` the zone and certificate files they name.
pub fn parse_sources(
    files: &[(&str, &str)],
    others: &[(&str, &str)],
) -> (Vec<Source>, Vec<Diagnostic>) {
    let read = |path: &Path| {
        (others.iter())
            .find(|(p, _)| Path::new(p) == path)
            .map(|(_, text)| text.as_bytes().to_vec())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    };
    let mut sources = Vec::new();
    let mut diagnostics = Vec::new();
    for (path, text) in files {
        match space_source(Path::new(path), text, &read) {
            Ok((source, more)) => {
                sources.push(source);
                diagnostics.extend(more);
            }
            Err(d) => diagnostics.push(d),
        }
    }
    (sources, diagnostics)
}

/// Reads one space file and the files it refers to.
/// A space file and the files it names, with the problems found; or why it could not be read.
type LoadedSpace = Result<(Source, Vec<Diagnostic>), Diagnostic>;

fn load_space(path: &Path) -> LoadedSpace {
    let text = fs::read_to_string(path).map_err(|e| at(path, 1, 1, format!("cannot read: {e}")))?;
    space_source(path, &text, &|p| fs::read(p))
}

/// Parses a space file's text and reads the zone and certificate files it names with `read`.
fn space_source(
    path: &Path,
    text: &str,
    read: &dyn Fn(&Path) -> io::Result<Vec<u8>>,
) -> Result<(Source, Vec<Diagnostic>), Diagnostic> {
    let (file, positions) = parse_space(path, text)?;
    let base = path.parent().unwrap_or(Path::new(""));
    let mut diagnostics = Vec::new();
    let mut named = Vec::new();
    let mut read = |path: &Path| {
        let bytes = read(path);
        named.push((
            path.to_path_buf(),
            bytes.as_ref().ok().map(|b| content_hash(b)),
        ));
        bytes
    };

    let mut zones = Vec::new();
    for (i, entry) in file.zones.iter().enumerate() {
        let zone_path = base.join(&entry.file);
        let text = read(&zone_path).and_then(|bytes| {
            String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        });
        let zone = match text {
            Ok(text) => {
                let origin = default_origin(&zone_path, entry.audience);
                parse_zone(&zone_path, &text, origin)
                    .map_err(|d| diagnostics.push(d))
                    .ok()
            }
            Err(e) => {
                let (line, column) = positions.at(&format!("zones[{i}].file"));
                let message = format!("cannot read zone file {}: {e}", zone_path.display());
                diagnostics.push(at(path, line, column, message));
                None
            }
        };
        zones.push(zone);
    }

    let mut certs = Vec::new();
    for (i, app) in file.apps.iter().enumerate() {
        let Some(tls) = &app.tls else {
            certs.push(None);
            continue;
        };
        let mut read_pem = |key: &str, file: &str| {
            let full = base.join(file);
            read(&full)
                .map_err(|e| {
                    let (line, column) = positions.at(&format!("apps[{i}].tls.{key}"));
                    let message = format!("cannot read {key} file {}: {e}", full.display());
                    diagnostics.push(at(path, line, column, message))
                })
                .ok()
        };
        let cert = read_pem("cert", &tls.cert);
        let key = read_pem("key", &tls.key);
        certs.push(cert.zip(key));
    }

    let mut keys = Vec::new();
    for (i, secondary) in file.secondaries.iter().enumerate() {
        let full = base.join(&secondary.key.file);
        let bytes = read(&full).map_err(|e| {
            let (line, column) = positions.at(&format!("secondaries[{i}].key.file"));
            let message = format!("cannot read key file {}: {e}", full.display());
            diagnostics.push(at(path, line, column, message))
        });
        keys.push(bytes.ok());
    }

    let source = Source {
        path: path.to_path_buf(),
        file,
        positions,
        zones,
        certs,
        keys,
        hash: content_hash(text.as_bytes()),
        named,
    };
    Ok((source, diagnostics))
}

/// The origin a zone file starts with unless it says `$ORIGIN`: its file name without `.zone`
/// (and without `.public` for a public-audience file), so `corp.example.com.public.zone` is
/// `corp.example.com.`.
pub fn default_origin(path: &Path, audience: Audience) -> Name {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let mut stem = name.strip_suffix(".zone").unwrap_or(name);
    if audience == Audience::Public {
        stem = stem.strip_suffix(".public").unwrap_or(stem);
    }
    let mut origin = Name::from_ascii(stem).unwrap_or_else(|_| Name::root());
    origin.set_fqdn(true);
    origin
}

/// Parses a space file's YAML. `path` only names the file in diagnostics.
pub fn parse_space(path: &Path, text: &str) -> Result<(SpaceFile, Positions), Diagnostic> {
    if let Some(file) = super::yaml::from_str(text) {
        return Ok((file, Positions::parse(text)));
    }
    let file: SpaceFile = serde_yaml::from_str(text).map_err(|e| {
        // An error at the very end of a file without a final newline is reported one line past
        // it; point at the last line instead.
        let last = text.lines().count().max(1);
        let (line, column) = e
            .location()
            .map_or((1, 1), |l| (l.line().min(last), l.column()));
        // serde_yaml appends " at line N column M" to its message; the position is ours to print.
        let message = e.to_string();
        let message = match message.find(" at line ") {
            Some(cut) => message[..cut].to_string(),
            None => message,
        };
        at(path, line, column, message)
    })?;
    Ok((file, Positions::parse(text)))
}

/// Parses a zone file's text with hickory's RFC 1035 parser, starting at `origin`.
///
/// hickory's parse errors carry no position, so on an error the parser is run again on
/// prefixes of the text that end between records, and the first record whose prefix fails is
/// the line reported (a binary search: a handful of extra parses, only on bad files).
pub fn parse_zone(path: &Path, text: &str, origin: Name) -> Result<ZoneText, Diagnostic> {
    let parse = |t: &str| Parser::new(t, Some(path.to_path_buf()), Some(origin.clone())).parse();
    match parse(text) {
        Ok((origin, records)) => Ok(ZoneText {
            path: path.to_path_buf(),
            origin,
            records,
            text: text.to_string(),
        }),
        Err(e) => {
            let cuts = record_ends(text);
            // The first cut whose prefix fails; the full text (the last cut) is known to fail.
            let failing = cuts.partition_point(|&end| parse(&text[..end]).is_ok());
            let start = if failing == 0 { 0 } else { cuts[failing - 1] };
            let line = first_record_line(text, start);
            Err(at(path, line, 1, format!("zone file does not parse: {e}")))
        }
    }
}

/// Byte offsets just past each line that ends a record: outside parentheses and quotes.
fn record_ends(text: &str) -> Vec<usize> {
    let mut ends = Vec::new();
    let (mut depth, mut quoted, mut comment, mut escaped) = (0i32, false, false, false);
    for (i, b) in text.bytes().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\n' => {
                comment = false;
                if depth <= 0 && !quoted {
                    ends.push(i + 1);
                }
            }
            _ if comment => {}
            b'\\' => escaped = true,
            b'"' => quoted = !quoted,
            _ if quoted => {}
            b';' => comment = true,
            b'(' => depth += 1,
            b')' => depth -= 1,
            _ => {}
        }
    }
    if ends.last() != Some(&text.len()) {
        ends.push(text.len());
    }
    ends
}

/// The 1-based line of the first line at or after byte `start` that holds more than a comment.
fn first_record_line(text: &str, start: usize) -> usize {
    let before = text[..start].matches('\n').count();
    let skipped = text[start..]
        .lines()
        .take_while(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with(';')
        })
        .count();
    before + skipped + 1
}

fn at(path: &Path, line: usize, column: usize, message: String) -> Diagnostic {
    Diagnostic {
        file: path.to_path_buf(),
        line,
        column,
        message,
    }
}

/// Where each entry of a YAML document starts, keyed by its path: `network`, `peers[0].cidrs[1]`,
/// `apps[2].tls.cert`. A mapping value is recorded at the value, a sequence item at the item.
///
/// The positions are worked out on the first lookup: a valid file, the common case, is never
/// parsed a second time.
#[derive(Debug, Clone, Default)]
pub struct Positions {
    text: Arc<str>,
    at: OnceLock<HashMap<String, (usize, usize)>>,
}

impl Positions {
    /// The positions of the entries of `text`; a document that does not parse as YAML gives
    /// what was seen before the error.
    pub fn parse(text: &str) -> Positions {
        Positions {
            text: text.into(),
            at: OnceLock::new(),
        }
    }

    /// The (line, column) of `path`, or of its nearest recorded parent, or (1, 1).
    pub fn at(&self, path: &str) -> (usize, usize) {
        let at = self.at.get_or_init(|| {
            let mut recorder = Recorder::default();
            let _ = EventParser::new_from_str(&self.text).load(&mut recorder, false);
            recorder.at
        });
        let mut path = path;
        loop {
            if let Some(&pos) = at.get(path) {
                return pos;
            }
            match path.rfind(['.', '[']) {
                Some(cut) => path = &path[..cut],
                None => return (1, 1),
            }
        }
    }
}

#[derive(Default)]
struct Recorder {
    stack: Vec<Frame>,
    at: HashMap<String, (usize, usize)>,
}

enum Frame {
    /// A mapping at `path`; `key` is the key whose value comes next.
    Map { path: String, key: Option<String> },
    /// A sequence at `path` whose next item is `next`.
    Seq { path: String, next: usize },
}

impl Recorder {
    /// The path of the node that starts now, or `None` when the node is a mapping key.
    fn place(&mut self, scalar: Option<&str>, mark: Marker) -> Option<String> {
        let path = match self.stack.last_mut() {
            None => String::new(),
            Some(Frame::Map {
                key: key @ None, ..
            }) => {
                *key = Some(scalar.unwrap_or_default().to_string());
                return None;
            }
            Some(Frame::Map { path, key }) => {
                let key = key.take().unwrap_or_default();
                if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                }
            }
            Some(Frame::Seq { path, next }) => {
                *next += 1;
                format!("{path}[{}]", *next - 1)
            }
        };
        self.at.insert(path.clone(), (mark.line(), mark.col() + 1));
        Some(path)
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                self.place(Some(&value), mark);
            }
            Event::Alias(_) => {
                self.place(None, mark);
            }
            Event::MappingStart(..) => {
                let path = self.place(None, mark).unwrap_or_default();
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.place(None, mark).unwrap_or_default();
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_point_at_values_and_items() {
        let text = "space: a\nnetwork: 10.0.0.0/8\npeers:\n  - name: vpn\n    cidrs: [1.2.3.0/24, 5.6.7.0/24]\napps:\n  - name: x\n    tls: {cert: c.pem, key: k.pem}\n";
        let p = Positions::parse(text);
        assert_eq!(p.at("network"), (2, 10));
        assert_eq!(p.at("peers[0].name"), (4, 11));
        assert_eq!(p.at("peers[0].cidrs[1]"), (5, 25));
        assert_eq!(p.at("apps[0].tls.key"), (8, 29));
        assert_eq!(p.at("apps[0].dynos[3].ip").0, 7, "falls back to the entry");
        assert_eq!(p.at("nothing"), (1, 1));
    }

    #[test]
    fn yaml_errors_name_line_and_column() {
        let d = parse_space(
            Path::new("s.yaml"),
            "space: a\nnetwork: 10.0.0.0/8\nbogus: 1\n",
        )
        .unwrap_err();
        assert_eq!((d.line, d.column), (3, 1));
        assert!(d.message.contains("unknown field `bogus`"), "{}", d.message);
        assert_eq!(d.to_string().split(": error:").next(), Some("s.yaml:3:1"));
    }

    #[test]
    fn zone_errors_name_the_failing_record_line() {
        let text = "$TTL 300\n@ IN SOA ns1 host (\n  1 2 3 4 5 )\n; a comment\n\nwww IN A 10.0.0.1\nbad IN A not-an-ip\nok IN A 10.0.0.2\n";
        let d = parse_zone(
            Path::new("z.zone"),
            text,
            Name::from_ascii("corp.example.").unwrap(),
        )
        .unwrap_err();
        assert_eq!(d.line, 7, "{d}");
        assert_eq!(d.file, Path::new("z.zone"));
    }

    #[test]
    fn zone_errors_in_multiline_records_point_at_their_first_line() {
        let text = "$TTL 300\n@ IN SOA ns1 host (\n  1 2 3 4 )\nwww IN A 10.0.0.1\n";
        let d = parse_zone(
            Path::new("z.zone"),
            text,
            Name::from_ascii("corp.example.").unwrap(),
        )
        .unwrap_err();
        assert_eq!(d.line, 2, "{d}");
    }

    #[test]
    fn default_origin_strips_zone_and_public_suffixes() {
        let o = default_origin(
            Path::new("z/corp.example.com.public.zone"),
            Audience::Public,
        );
        assert_eq!(o.to_ascii(), "corp.example.com.");
        let o = default_origin(Path::new("corp.example.com.zone"), Audience::Trusted);
        assert_eq!(o.to_ascii(), "corp.example.com.");
    }
}
