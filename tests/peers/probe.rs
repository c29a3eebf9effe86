//! ffprobe as an independent judge of what a server recorded.

use std::path::Path;
use std::process::Command;

const SETUP_HINT: &str = "run scripts/setup-deps.sh (installs ffmpeg/ffprobe)";

/// The first video stream of a media file as ffprobe sees it after decoding every frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoProbe {
    /// ffprobe's codec name, e.g. `h264`.
    pub codec: String,
    /// Coded width.
    pub width: u32,
    /// Coded height.
    pub height: u32,
    /// Frames read (`-count_frames` → `nb_read_frames`).
    pub frames: u64,
}

/// Fails the test with a setup hint when a tool is not installed.
pub fn require(tool: &str) {
    let found = Command::new(tool).arg("-version").output().is_ok();
    assert!(found, "{tool} not found; {SETUP_HINT}");
}

/// Probes `path`; `Err` carries ffprobe's message (e.g. the file is still empty).
pub fn probe(path: &Path) -> Result<VideoProbe, String> {
    require("ffprobe");
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames",
            "-of",
            "default=noprint_wrappers=1",
        ])
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run ffprobe: {e}; {SETUP_HINT}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "ffprobe failed on {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
            .ok_or_else(|| format!("ffprobe printed no {name} for {}: {text}", path.display()))
    };
    let num = |name: &str| -> Result<u64, String> {
        field(name)?
            .parse()
            .map_err(|e| format!("ffprobe {name} not a number: {e}"))
    };
    Ok(VideoProbe {
        codec: field("codec_name")?,
        width: num("width")? as u32,
        height: num("height")? as u32,
        frames: num("nb_read_frames")?,
    })
}

/// Probes `path` and fails the test with ffprobe's message when it cannot.
pub fn probe_file(path: &Path) -> VideoProbe {
    probe(path).unwrap_or_else(|e| panic!("{e}"))
}

/// Packet presentation times (seconds) and sizes of the recording's video stream, in file
/// order: what a player's clock would see, independent of how many frames were decodable.
pub fn packets(path: &Path) -> Vec<(f64, u64)> {
    require("ffprobe");
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["packet=pts_time,size", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ffprobe: {e}; {SETUP_HINT}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split(',');
            let t = it.next()?.trim().parse().ok()?;
            let s = it.next()?.trim().parse().ok()?;
            Some((t, s))
        })
        .collect()
}
