//! The H.265/HEVC bitstream pieces a container needs: NAL types, the SPS fields of the
//! HEVCDecoderConfigurationRecord (`hvcC`) and of `onMetaData`, and Annex-B → length-prefixed.
//!
//! Pure and total: every malformed input is an [`HevcError`], never a panic, because the bytes
//! may come from a payload feed dockcast does not control.

use crate::media::h264::{nal_to_rbsp, nal_units, BitReader, H264Error};
use bytes::Bytes;
use thiserror::Error;

/// HEVC NAL unit type of a VPS.
pub const NAL_VPS: u8 = 32;
/// HEVC NAL unit type of an SPS.
pub const NAL_SPS: u8 = 33;
/// HEVC NAL unit type of a PPS.
pub const NAL_PPS: u8 = 34;
/// HEVC NAL unit type of an access unit delimiter.
pub const NAL_AUD: u8 = 35;
/// HEVC NAL unit type of prefix SEI.
pub const NAL_SEI_PREFIX: u8 = 39;
/// HEVC NAL unit type of suffix SEI.
pub const NAL_SEI_SUFFIX: u8 = 40;

/// The NAL unit type of an HEVC NAL (first header byte, bits 1..7).
pub fn nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| (b >> 1) & 0x3f)
}

/// True for the VCL types a decoder can start on (IRAP: BLA, IDR, CRA).
pub fn is_irap(nal_type: u8) -> bool {
    (16..=23).contains(&nal_type)
}

/// Why HEVC parsing failed; names the field or NAL that was bad.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HevcError {
    /// The input ended while reading `field`.
    #[error("H.265 data truncated while reading {field}")]
    Truncated {
        /// The syntax element being read.
        field: &'static str,
    },
    /// A field held a value no valid stream has.
    #[error("invalid H.265 value {value} for {field}")]
    InvalidValue {
        /// The syntax element.
        field: &'static str,
        /// The value found (Exp-Golomb overflow reads as `u64::MAX`).
        value: u64,
    },
    /// A parameter set longer than the 16-bit length field of `hvcC`.
    #[error("H.265 {what} of {len} bytes does not fit the HEVC decoder configuration record")]
    TooLarge {
        /// Which parameter set.
        what: &'static str,
        /// Its length.
        len: usize,
    },
}

impl From<H264Error> for HevcError {
    fn from(e: H264Error) -> Self {
        match e {
            H264Error::Truncated { field } => HevcError::Truncated { field },
            H264Error::InvalidExpGolomb { field } => HevcError::InvalidValue {
                field,
                value: u64::MAX,
            },
            H264Error::InvalidValue { field, value } => HevcError::InvalidValue { field, value },
            H264Error::WrongNalType { found, .. } => HevcError::InvalidValue {
                field: "nal_unit_type",
                value: u64::from(found),
            },
            H264Error::TooLarge { what, len } => HevcError::TooLarge { what, len },
        }
    }
}

/// What `hvcC` and `onMetaData` need from an HEVC SPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HevcSps {
    /// general_profile_space (2 bits), general_tier_flag (1), general_profile_idc (5), as
    /// the one byte `hvcC` stores.
    pub profile_byte: u8,
    /// general_profile_compatibility_flags.
    pub compatibility_flags: u32,
    /// The 48 general constraint indicator flags.
    pub constraint_flags: [u8; 6],
    /// general_level_idc.
    pub level_idc: u8,
    /// sps_max_sub_layers_minus1 + 1.
    pub sub_layers: u8,
    /// sps_temporal_id_nesting_flag.
    pub temporal_id_nested: bool,
    /// chroma_format_idc (1 = 4:2:0).
    pub chroma_format_idc: u8,
    /// bit_depth_luma_minus8.
    pub bit_depth_luma_minus8: u8,
    /// bit_depth_chroma_minus8.
    pub bit_depth_chroma_minus8: u8,
    /// Displayed width (conformance window applied).
    pub width: u32,
    /// Displayed height (conformance window applied).
    pub height: u32,
}

impl HevcSps {
    /// Parses an SPS NAL (2-byte header included, emulation prevention not yet removed).
    pub fn parse(nal: &[u8]) -> Result<Self, HevcError> {
        if nal_type(nal) != Some(NAL_SPS) {
            return Err(HevcError::InvalidValue {
                field: "nal_unit_type",
                value: nal_type(nal).map_or(u64::MAX, u64::from),
            });
        }
        let rbsp = nal_to_rbsp(nal.get(2..).ok_or(HevcError::Truncated {
            field: "nal_unit_header",
        })?);
        let mut r = BitReader::new(&rbsp);
        r.bits(4, "sps_video_parameter_set_id")?;
        let max_sub_layers_minus1 = r.bits(3, "sps_max_sub_layers_minus1")? as u8;
        if max_sub_layers_minus1 > 6 {
            return Err(HevcError::InvalidValue {
                field: "sps_max_sub_layers_minus1",
                value: u64::from(max_sub_layers_minus1),
            });
        }
        let temporal_id_nested = r.bits(1, "sps_temporal_id_nesting_flag")? == 1;
        // profile_tier_level(1, max_sub_layers_minus1)
        let profile_byte = r.bits(8, "general_profile")? as u8;
        let compatibility_flags = r.bits(32, "general_profile_compatibility_flags")?;
        let mut constraint_flags = [0u8; 6];
        for b in &mut constraint_flags {
            *b = r.bits(8, "general_constraint_indicator_flags")? as u8;
        }
        let level_idc = r.bits(8, "general_level_idc")? as u8;
        let mut sub_profile = [false; 8];
        let mut sub_level = [false; 8];
        for i in 0..usize::from(max_sub_layers_minus1) {
            sub_profile[i] = r.bits(1, "sub_layer_profile_present_flag")? == 1;
            sub_level[i] = r.bits(1, "sub_layer_level_present_flag")? == 1;
        }
        if max_sub_layers_minus1 > 0 {
            for _ in max_sub_layers_minus1..8 {
                r.bits(2, "reserved_zero_2bits")?;
            }
        }
        for i in 0..usize::from(max_sub_layers_minus1) {
            if sub_profile[i] {
                // profile space..level-independent flags: 88 bits.
                for _ in 0..11 {
                    r.bits(8, "sub_layer_profile")?;
                }
            }
            if sub_level[i] {
                r.bits(8, "sub_layer_level_idc")?;
            }
        }
        r.ue("sps_seq_parameter_set_id")?;
        let chroma_format_idc = r.ue("chroma_format_idc")?;
        if chroma_format_idc > 3 {
            return Err(HevcError::InvalidValue {
                field: "chroma_format_idc",
                value: u64::from(chroma_format_idc),
            });
        }
        if chroma_format_idc == 3 {
            r.bits(1, "separate_colour_plane_flag")?;
        }
        let pic_width = r.ue("pic_width_in_luma_samples")?;
        let pic_height = r.ue("pic_height_in_luma_samples")?;
        let (mut left, mut right, mut top, mut bottom) = (0, 0, 0, 0);
        if r.bits(1, "conformance_window_flag")? == 1 {
            left = r.ue("conf_win_left_offset")?;
            right = r.ue("conf_win_right_offset")?;
            top = r.ue("conf_win_top_offset")?;
            bottom = r.ue("conf_win_bottom_offset")?;
        }
        let bit_depth_luma_minus8 = r.ue("bit_depth_luma_minus8")?;
        let bit_depth_chroma_minus8 = r.ue("bit_depth_chroma_minus8")?;
        if bit_depth_luma_minus8 > 8 || bit_depth_chroma_minus8 > 8 {
            return Err(HevcError::InvalidValue {
                field: "bit_depth_minus8",
                value: u64::from(bit_depth_luma_minus8.max(bit_depth_chroma_minus8)),
            });
        }
        let sub_width: u32 = if matches!(chroma_format_idc, 1 | 2) {
            2
        } else {
            1
        };
        let sub_height: u32 = if chroma_format_idc == 1 { 2 } else { 1 };
        let crop_w = u64::from(sub_width) * (u64::from(left) + u64::from(right));
        let crop_h = u64::from(sub_height) * (u64::from(top) + u64::from(bottom));
        let width = u64::from(pic_width).checked_sub(crop_w).filter(|w| *w > 0);
        let height = u64::from(pic_height).checked_sub(crop_h).filter(|h| *h > 0);
        let (Some(width), Some(height)) = (width, height) else {
            return Err(HevcError::InvalidValue {
                field: "conformance_window",
                value: crop_w.max(crop_h),
            });
        };
        Ok(HevcSps {
            profile_byte,
            compatibility_flags,
            constraint_flags,
            level_idc,
            sub_layers: max_sub_layers_minus1 + 1,
            temporal_id_nested,
            chroma_format_idc: chroma_format_idc as u8,
            bit_depth_luma_minus8: bit_depth_luma_minus8 as u8,
            bit_depth_chroma_minus8: bit_depth_chroma_minus8 as u8,
            width: u32::try_from(width).unwrap_or(u32::MAX),
            height: u32::try_from(height).unwrap_or(u32::MAX),
        })
    }
}

/// The HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 §8.3.3.1) for one VPS, SPS and PPS
/// (NAL units without start codes), with 4-byte NAL lengths.
pub fn hevc_decoder_configuration_record(
    vps: &[u8],
    sps: &[u8],
    pps: &[u8],
) -> Result<Vec<u8>, HevcError> {
    let parsed = HevcSps::parse(sps)?;
    let mut out = Vec::with_capacity(23 + 15 + vps.len() + sps.len() + pps.len());
    out.push(1); // configurationVersion
    out.push(parsed.profile_byte);
    out.extend_from_slice(&parsed.compatibility_flags.to_be_bytes());
    out.extend_from_slice(&parsed.constraint_flags);
    out.push(parsed.level_idc);
    out.extend_from_slice(&[0xf0, 0x00]); // reserved + min_spatial_segmentation_idc 0
    out.push(0xfc); // reserved + parallelismType 0 (unknown)
    out.push(0xfc | parsed.chroma_format_idc);
    out.push(0xf8 | parsed.bit_depth_luma_minus8);
    out.push(0xf8 | parsed.bit_depth_chroma_minus8);
    out.extend_from_slice(&[0, 0]); // avgFrameRate unknown
                                    // constantFrameRate 0, numTemporalLayers, temporalIdNested, lengthSizeMinusOne 3.
    out.push(((parsed.sub_layers & 0x07) << 3) | (u8::from(parsed.temporal_id_nested) << 2) | 3);
    out.push(3); // numOfArrays
    for (what, ty, nal) in [
        ("VPS", NAL_VPS, vps),
        ("SPS", NAL_SPS, sps),
        ("PPS", NAL_PPS, pps),
    ] {
        let len = u16::try_from(nal.len()).map_err(|_| HevcError::TooLarge {
            what,
            len: nal.len(),
        })?;
        out.push(0x80 | ty); // array_completeness 1
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(nal);
    }
    Ok(out)
}

/// Appends an Annex-B access unit as 4-byte length-prefixed NAL units, without VPS/SPS/PPS/AUD
/// (those travel in the sequence header).
pub fn annexb_to_hvcc(au: &[u8], out: &mut Vec<u8>) {
    for nal in nal_units(au) {
        if matches!(
            nal_type(nal),
            Some(NAL_VPS | NAL_SPS | NAL_PPS | NAL_AUD) | None
        ) {
            continue;
        }
        let Ok(len) = u32::try_from(nal.len()) else {
            continue;
        };
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(nal);
    }
}

/// Cuts a whole HEVC Annex-B stream into access units `(data, irap)`: a new unit starts at a
/// VPS/SPS/PPS/AUD/prefix SEI after slice data, or at a slice whose
/// first_slice_segment_in_pic_flag is set. For files and tests; live feeds deliver whole units.
pub fn split_access_units(stream: &[u8]) -> Vec<(Bytes, bool)> {
    let mut units = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let mut has_slice = false;
    let mut irap = false;
    for nal in nal_units(stream) {
        let Some(ty) = nal_type(nal) else { continue };
        let vcl = ty < 32;
        let first_slice = vcl && nal.get(2).is_some_and(|b| b & 0x80 != 0);
        let starts_new = has_slice
            && (first_slice
                || matches!(ty, NAL_VPS | NAL_SPS | NAL_PPS | NAL_AUD | NAL_SEI_PREFIX));
        if starts_new {
            units.push((Bytes::from(std::mem::take(&mut current)), irap));
            has_slice = false;
            irap = false;
        }
        current.extend_from_slice(&[0, 0, 0, 1]);
        current.extend_from_slice(nal);
        if vcl {
            has_slice = true;
            irap |= is_irap(ty);
        }
    }
    if has_slice {
        units.push((Bytes::from(current), irap));
    }
    units
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // x265 3.5 Main 640x360, 4:2:0 8-bit, level 2.1 (ffmpeg -c:v libx265 on testsrc).
    const VPS: [u8; 24] = [
        0x40, 0x01, 0x0c, 0x01, 0xff, 0xff, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00,
        0x03, 0x00, 0x00, 0x03, 0x00, 0x3f, 0x95, 0x98, 0x09,
    ];
    const SPS: [u8; 42] = [
        0x42, 0x01, 0x01, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00, 0x03, 0x00, 0x00,
        0x03, 0x00, 0x3f, 0xa0, 0x05, 0x02, 0x01, 0x69, 0x65, 0x95, 0x9a, 0x49, 0x32, 0xbc, 0x05,
        0xa0, 0x20, 0x00, 0x00, 0x03, 0x00, 0x20, 0x00, 0x00, 0x03, 0x03, 0xc1,
    ];
    const PPS: [u8; 7] = [0x44, 0x01, 0xc1, 0x72, 0xb4, 0x62, 0x40];

    #[test]
    fn parses_x265_sps() {
        let sps = HevcSps::parse(&SPS).expect("sps");
        assert_eq!((sps.width, sps.height), (640, 360));
        assert_eq!(sps.profile_byte, 0x01, "Main profile, main tier");
        assert_eq!(sps.level_idc, 63);
        assert_eq!(sps.chroma_format_idc, 1);
        assert_eq!(
            (sps.bit_depth_luma_minus8, sps.bit_depth_chroma_minus8),
            (0, 0)
        );
        assert_eq!(sps.sub_layers, 1);
        assert!(sps.temporal_id_nested);
    }

    #[test]
    fn record_layout() {
        let rec = hevc_decoder_configuration_record(&VPS, &SPS, &PPS).expect("record");
        assert_eq!(rec[0], 1);
        assert_eq!(rec[1], 0x01);
        assert_eq!(&rec[2..6], &[0x60, 0, 0, 0]);
        assert_eq!(rec[12], 63);
        assert_eq!(&rec[13..22], &[0xf0, 0, 0xfc, 0xfd, 0xf8, 0xf8, 0, 0, 0x0f]);
        assert_eq!(rec[22], 3);
        assert_eq!(&rec[23..28], &[0xa0, 0, 1, 0, 24]);
        assert_eq!(rec.len(), 23 + 3 * 5 + VPS.len() + SPS.len() + PPS.len());
    }

    #[test]
    fn hvcc_drops_parameter_sets() {
        let mut au = Vec::new();
        for nal in [&VPS[..], &SPS[..], &PPS[..], &[0x26, 0x01, 0xaf, 0x80][..]] {
            au.extend_from_slice(&[0, 0, 0, 1]);
            au.extend_from_slice(nal);
        }
        let mut out = Vec::new();
        annexb_to_hvcc(&au, &mut out);
        assert_eq!(out, vec![0, 0, 0, 4, 0x26, 0x01, 0xaf, 0x80]);
        let units = split_access_units(&au);
        assert_eq!(units.len(), 1);
        assert!(units[0].1, "IDR_W_RADL is IRAP");
    }

    #[test]
    fn errors_not_panics() {
        assert!(HevcSps::parse(&[]).is_err());
        assert!(HevcSps::parse(&[0x42]).is_err());
        assert!(HevcSps::parse(&SPS[..12]).is_err());
        assert!(HevcSps::parse(&PPS).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_sps_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut nal = vec![0x42, 0x01];
            nal.extend_from_slice(&tail);
            let _ = HevcSps::parse(&nal);
            let _ = hevc_decoder_configuration_record(&VPS, &nal, &PPS);
            let _ = split_access_units(&tail);
        }
    }
}
