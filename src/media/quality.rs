//! The quality ladder: what each DJI `video_quality` level means in pixels, frames and bits.
//!
//! The Cloud API names five levels (0 adaptive, 1 smooth, 2 standard, 3 high, 4 ultra-high) but
//! leaves their meaning to the device. The defaults follow the Dock 1 / Dock 3 tables of DJI's
//! documentation; a board with a weaker CPU overrides them in its config.

use serde::{Deserialize, Serialize};

/// One step of the ladder: the encoder's output format for a quality level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rung {
    /// Output width in pixels (even).
    pub width: u32,
    /// Output height in pixels (even).
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Target bitrate in kbit/s.
    pub bitrate_kbps: u32,
}

impl Rung {
    /// Checks the limits the encoder and H.264 levels impose, naming the field that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.width < 16 || self.height < 16 || self.width % 2 != 0 || self.height % 2 != 0 {
            return Err(format!(
                "{}x{} is not an even size of at least 16x16",
                self.width, self.height
            ));
        }
        if self.width.max(self.height) > 3840 || self.width.min(self.height) > 2160 {
            return Err(format!(
                "{}x{} is larger than the encoder's 3840x2160",
                self.width, self.height
            ));
        }
        if !(1..=60).contains(&self.fps) {
            return Err(format!("fps {} is not within 1..=60", self.fps));
        }
        if !(32..=50_000).contains(&self.bitrate_kbps) {
            return Err(format!(
                "bitrate_kbps {} is not within 32..=50000",
                self.bitrate_kbps
            ));
        }
        Ok(())
    }

    /// True when switching from `self` to `other` needs a new encoder (a new IDR and parameter
    /// sets), not only a new bitrate.
    pub fn needs_reinit(&self, other: &Rung) -> bool {
        self.width != other.width || self.height != other.height || self.fps != other.fps
    }
}

/// The four fixed rungs plus the level adaptive quality starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ladder {
    /// Level 1.
    pub smooth: Rung,
    /// Level 2.
    pub standard: Rung,
    /// Level 3.
    pub high: Rung,
    /// Level 4.
    pub ultra_high: Rung,
    /// The fixed level (1–4) that level 0 (adaptive) starts from until a sink's congestion
    /// signal moves it.
    pub adaptive_start: u8,
}

impl Default for Ladder {
    fn default() -> Self {
        Ladder {
            smooth: Rung {
                width: 960,
                height: 540,
                fps: 30,
                bitrate_kbps: 512,
            },
            standard: Rung {
                width: 1280,
                height: 720,
                fps: 30,
                bitrate_kbps: 1000,
            },
            high: Rung {
                width: 1280,
                height: 720,
                fps: 30,
                bitrate_kbps: 1500,
            },
            ultra_high: Rung {
                width: 1920,
                height: 1080,
                fps: 30,
                bitrate_kbps: 3000,
            },
            adaptive_start: 3,
        }
    }
}

impl Ladder {
    /// The rung for a Cloud API quality level 0–4, or `None` for any other number.
    pub fn rung(&self, level: u8) -> Option<Rung> {
        match level {
            0 => self.fixed(self.adaptive_start),
            n => self.fixed(n),
        }
    }

    fn fixed(&self, level: u8) -> Option<Rung> {
        match level {
            1 => Some(self.smooth),
            2 => Some(self.standard),
            3 => Some(self.high),
            4 => Some(self.ultra_high),
            _ => None,
        }
    }

    /// Checks every rung, returning the config key that is wrong and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (name, rung) in [
            ("smooth", &self.smooth),
            ("standard", &self.standard),
            ("high", &self.high),
            ("ultra_high", &self.ultra_high),
        ] {
            rung.validate()
                .map_err(|why| (format!("quality.{name}"), why))?;
        }
        if self.fixed(self.adaptive_start).is_none() {
            return Err((
                "quality.adaptive_start".into(),
                format!("{} is not a fixed level 1..=4", self.adaptive_start),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_documented_defaults() {
        let l = Ladder::default();
        assert_eq!(
            l.rung(1).map(|r| (r.width, r.bitrate_kbps)),
            Some((960, 512))
        );
        assert_eq!(
            l.rung(4).map(|r| (r.height, r.bitrate_kbps)),
            Some((1080, 3000))
        );
        assert_eq!(l.rung(0), l.rung(3));
        assert_eq!(l.rung(5), None);
        assert!(l.validate().is_ok());
    }

    #[test]
    fn validation_names_the_rung() {
        let mut l = Ladder::default();
        l.high.width = 1281;
        assert_eq!(l.validate().unwrap_err().0, "quality.high");
        let l = Ladder {
            adaptive_start: 0,
            ..Ladder::default()
        };
        assert_eq!(l.validate().unwrap_err().0, "quality.adaptive_start");
    }

    #[test]
    fn bitrate_only_change_keeps_encoder() {
        let l = Ladder::default();
        assert!(!l.standard.needs_reinit(&l.high));
        assert!(l.high.needs_reinit(&l.ultra_high));
    }
}
