//! Placeholder ffprobe helper, only so the end-to-end tests compile on this branch; the full
//! helper lives on its own branch and replaces this file when the branches meet.

use std::path::Path;
use std::process::Command;

/// What ffprobe says about the first video stream of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// ffprobe's codec name, e.g. `h264`.
    pub codec: String,
    /// Width in pixels (of the first decoded parameters).
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames decoded (`-count_frames`).
    pub frames: u64,
}

/// Runs `ffprobe -count_frames` on `path`; panics with ffprobe's output if it fails.
pub fn probe_file(path: &Path) -> Probe {
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
        .expect("run ffprobe (apt-get install ffmpeg)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ffprobe {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    Probe {
        codec: field("codec_name"),
        width: field("width").parse().unwrap_or(0),
        height: field("height").parse().unwrap_or(0),
        frames: field("nb_read_frames").parse().unwrap_or(0),
    }
}
