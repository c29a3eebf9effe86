use dockcast::media::encoder::H264Encoder;
use dockcast::media::quality::Rung;
use dockcast::source::pattern::{PatternSource, Style};
use dockcast::source::{SourceFrame, VideoSource};
use std::io::Write;
use std::time::Duration;
fn main() {
    let rung = Rung {
        width: 960,
        height: 540,
        fps: 30,
        bitrate_kbps: 512,
    };
    let mut enc = H264Encoder::new(rung, 30).unwrap();
    let mut src = PatternSource::new(Style::Normal);
    let mut out = std::fs::File::create("/tmp/m/raw.h264").unwrap();
    for i in 0..90 {
        if let Ok(SourceFrame::Raw(f)) = src.next_frame(&rung) {
            if let Some(e) = enc.encode(f, Duration::from_millis(i * 33)).unwrap() {
                out.write_all(&e.data).unwrap();
            }
        }
    }
}
