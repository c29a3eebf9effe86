//! Captures from a V4L2 device through dockcast's own pipeline and writes the encoded stream to
//! a file: the program `scripts/vivid-test.sh` runs inside a VM whose only camera is the
//! kernel's `vivid` driver (the VM has no network, so the stream leaves as a file).
//!
//! `v4l2_capture SOURCE_URI WIDTHxHEIGHT FRAMES OUT.h264` — prints every pipeline event and
//! the counters, one per line, so the host can judge the unplug/replug path from the log.
//! First it opens the source on its own and asks for a frame without waiting, as the pipeline
//! does with a lens it is switching to, and prints whether one came (`FIRST_WAIT frame`) or not
//! yet (`FIRST_WAIT none`): a camera just opened has no frame yet, and the ask must not block
//! until it has.

use dockcast::media::pipeline::{Pipeline, PipelineEvent, PipelineSpec};
use dockcast::media::quality::Rung;
use dockcast::source::SourceSpec;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 5,
        "usage: v4l2_capture SOURCE_URI WIDTHxHEIGHT FRAMES OUT.h264"
    );
    let spec: SourceSpec = args[1].parse()?;
    let (w, h) = args[2]
        .split_once('x')
        .ok_or_else(|| anyhow::anyhow!("size is WIDTHxHEIGHT"))?;
    let frames: usize = args[3].parse()?;
    let rung = Rung {
        width: w.parse()?,
        height: h.parse()?,
        fps: 30,
        bitrate_kbps: 800,
    };
    {
        let mut src = spec.open("normal")?;
        let first = src.wait_frame(&rung, Duration::ZERO)?;
        println!(
            "FIRST_WAIT {}",
            if first.is_some() { "frame" } else { "none" }
        );
    }
    let mut inputs = BTreeMap::new();
    inputs.insert("normal".to_string(), spec);
    let pipeline_spec = PipelineSpec {
        inputs,
        input: "normal".into(),
        rung,
        gop_frames: 30,
        backend: Default::default(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(120);
    let (etx, mut erx) = tokio::sync::mpsc::channel(16);
    let pipeline = Pipeline::spawn(pipeline_spec, tx, etx)?;
    let mut out = std::fs::File::create(&args[4])?;
    let mut got = 0;
    let mut keys = 0;
    // Bounded: a device that never delivers ends the run with what it has.
    let deadline = Instant::now() + Duration::from_secs(120);
    while got < frames && Instant::now() < deadline {
        while let Ok(ev) = erx.try_recv() {
            match ev {
                PipelineEvent::InputFailed { input, reason } => {
                    println!("EVENT input-failed {input}: {reason}")
                }
                PipelineEvent::InputDown { input, reason } => {
                    println!("EVENT input-down {input}: {reason}")
                }
                PipelineEvent::InputUp { input } => println!("EVENT input-up {input}"),
                PipelineEvent::Fatal { reason } => println!("EVENT fatal: {reason}"),
            }
        }
        match rx.try_recv() {
            Ok(f) => {
                out.write_all(&f.data)?;
                got += 1;
                keys += usize::from(f.keyframe);
                if got % 30 == 0 {
                    println!("FRAMES {got} pts={:?}", f.pts);
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    let s = &pipeline.stats;
    println!(
        "DONE frames={got} keyframes={keys} input_failures={} dropped={} down={}",
        s.input_failures.load(Ordering::Relaxed),
        s.frames_dropped.load(Ordering::Relaxed),
        s.input_down.load(Ordering::Relaxed)
    );
    Ok(())
}
