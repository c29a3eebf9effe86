//! A bound on how deeply the server's AMF0 nests, checked before rml_amf0 parses it. Sans-IO.
//!
//! rml_amf0 parses objects and arrays by recursion with no depth limit, and the server's
//! commands and data messages all go through it. A few kilobytes of nested objects from a
//! broken or hostile server would overflow the tokio worker's stack, and a stack overflow
//! aborts the whole process: `catch_unwind` cannot stop it. [`check_depth`] walks the same
//! bytes without recursion first, so that only AMF0 that nests no deeper than a limit ever
//! reaches rml_amf0.
//!
//! The walk follows rml_amf0's reading of the format wherever rml_amf0 descends (objects,
//! ECMA arrays, strict arrays, including its early end of a strict array at an object-end
//! marker), so it reaches at least every depth rml_amf0 would. Where rml_amf0 gives up (an
//! unknown marker, a property without a value, the end of the input), nothing deeper can
//! reach its recursion and the walk stops with success: telling well-formed AMF0 from broken
//! is left to rml_amf0, which reports it as an error. Markers rml_amf0 refuses but AMF0 defines
//! are still walked, typed objects (0x10) counting as a level, so the bound holds for any AMF0
//! reader.

use thiserror::Error;

/// The deepest nesting of objects and arrays accepted from a server. Real servers send
/// command objects and `onStatus` infos one or two levels deep; 64 is far beyond them and
/// costs rml_amf0 only a few tens of kilobytes of stack.
pub const MAX_DEPTH: usize = 64;

/// AMF0 that must not be given to a recursive parser.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Amf0Error {
    /// Objects or arrays nested deeper than `limit`.
    #[error("AMF0 values nested deeper than {limit} levels (at byte {offset})")]
    TooDeep {
        /// The limit that was exceeded.
        limit: usize,
        /// Offset of the marker of the first value past the limit.
        offset: usize,
    },
}

const NUMBER: u8 = 0x00;
const BOOLEAN: u8 = 0x01;
const STRING: u8 = 0x02;
const OBJECT: u8 = 0x03;
const NULL: u8 = 0x05;
const UNDEFINED: u8 = 0x06;
const REFERENCE: u8 = 0x07;
const ECMA_ARRAY: u8 = 0x08;
const OBJECT_END: u8 = 0x09;
const STRICT_ARRAY: u8 = 0x0A;
const DATE: u8 = 0x0B;
const LONG_STRING: u8 = 0x0C;
const UNSUPPORTED: u8 = 0x0D;
const RECORDSET: u8 = 0x0E;
const XML_DOCUMENT: u8 = 0x0F;
const TYPED_OBJECT: u8 = 0x10;
const AVMPLUS: u8 = 0x11;

/// The containers open at some point of the walk.
enum Open {
    /// Object, ECMA array or typed object: named properties up to an empty name and 0x09.
    Object,
    /// Strict array: this many values still to come.
    Array(u32),
}

/// Checks that the AMF0 values in `data` nest no more than `limit` objects and arrays deep.
///
/// Never panics and never recurses; the time taken is linear in `data.len()` and the memory
/// in `limit`.
pub fn check_depth(data: &[u8], limit: usize) -> Result<(), Amf0Error> {
    let mut open: Vec<Open> = Vec::new();
    let mut pos = 0usize;
    loop {
        // What the innermost container expects next decides whether a value follows.
        match open.last_mut() {
            None => {}
            Some(Open::Object) => {
                let Some(name_len) = read_u16(data, pos) else {
                    return Ok(());
                };
                pos += 2;
                if name_len == 0 {
                    // rml_amf0 takes an empty name only before the object-end marker.
                    if data.get(pos) != Some(&OBJECT_END) {
                        return Ok(());
                    }
                    pos += 1;
                    open.pop();
                    continue;
                }
                match skip(data, pos, usize::from(name_len)) {
                    Some(next) => pos = next,
                    None => return Ok(()),
                }
                // A property whose value is the object-end marker is an error to rml_amf0.
                if data.get(pos) == Some(&OBJECT_END) {
                    return Ok(());
                }
            }
            Some(Open::Array(left)) => {
                if *left == 0 {
                    open.pop();
                    continue;
                }
                *left -= 1;
                // rml_amf0 ends a strict array early at the object-end marker, as at the end of
                // the input, and goes on with what contains the array.
                if data.get(pos) == Some(&OBJECT_END) {
                    pos += 1;
                    open.pop();
                    continue;
                }
            }
        }
        let Some(&marker) = data.get(pos) else {
            return Ok(());
        };
        let at = pos;
        pos += 1;
        let next = match marker {
            NUMBER => skip(data, pos, 8),
            BOOLEAN => skip(data, pos, 1),
            STRING => read_u16(data, pos).and_then(|n| skip(data, pos + 2, usize::from(n))),
            NULL | UNDEFINED | UNSUPPORTED | RECORDSET => Some(pos),
            REFERENCE => skip(data, pos, 2),
            DATE => skip(data, pos, 10),
            LONG_STRING | XML_DOCUMENT => read_u32(data, pos)
                .and_then(|n| usize::try_from(n).ok())
                .and_then(|n| skip(data, pos + 4, n)),
            OBJECT => {
                open.push(Open::Object);
                Some(pos)
            }
            ECMA_ARRAY => {
                // The count is not trusted (nor is it by rml_amf0): properties end at 0x09.
                open.push(Open::Object);
                skip(data, pos, 4)
            }
            TYPED_OBJECT => {
                open.push(Open::Object);
                read_u16(data, pos).and_then(|n| skip(data, pos + 2, usize::from(n)))
            }
            STRICT_ARRAY => read_u32(data, pos).map(|count| {
                open.push(Open::Array(count));
                pos + 4
            }),
            // The top-level end marker ends rml_amf0's reading. The AMF3 switch hands the rest
            // to AMF3, which neither this walk nor rml_amf0 reads (rml_amf0 refuses the
            // marker before going deeper); any other marker is unknown.
            OBJECT_END | AVMPLUS => None,
            _ => None,
        };
        if open.len() > limit {
            return Err(Amf0Error::TooDeep { limit, offset: at });
        }
        match next {
            Some(next) => pos = next,
            None => return Ok(()),
        }
    }
}

/// The RTMP message types whose body rml_rtmp parses as AMF0, and where in the body the AMF0
/// starts: data (18) and command (20), and their AMF3-flagged forms (15, 17), which rml_rtmp
/// reads as AMF0 too, a command after a leading zero byte when there is one.
pub fn amf0_body(type_id: u8, payload: &[u8]) -> Option<&[u8]> {
    match type_id {
        15 | 18 | 20 => Some(payload),
        17 => Some(payload.strip_prefix(&[0]).unwrap_or(payload)),
        _ => None,
    }
}

/// `pos + n` when that is within `data`.
fn skip(data: &[u8], pos: usize, n: usize) -> Option<usize> {
    pos.checked_add(n).filter(|end| *end <= data.len())
}

fn read_u16(data: &[u8], pos: usize) -> Option<u16> {
    let bytes = data.get(pos..pos.checked_add(2)?)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

fn read_u32(data: &[u8], pos: usize) -> Option<u32> {
    let bytes = data.get(pos..pos.checked_add(4)?)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rml_rtmp::rml_amf0::{self, Amf0Value};
    use std::collections::HashMap;

    /// `{a: {a: … null}}` with `depth` objects, written by hand: rml_amf0's serializer
    /// recurses as deeply as its parser.
    fn nested_objects(depth: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for _ in 0..depth {
            v.extend_from_slice(b"\x03\x00\x01a");
        }
        v.push(NULL);
        for _ in 0..depth {
            v.extend_from_slice(b"\x00\x00\x09");
        }
        v
    }

    fn serialize(values: &[Amf0Value]) -> Vec<u8> {
        rml_amf0::serialize(&values.to_vec()).expect("serialize")
    }

    /// A value nesting `depth` containers, the kind of each level chosen by `kinds`.
    fn nested_value(depth: usize, kinds: &[u8]) -> Amf0Value {
        let mut v = Amf0Value::Utf8String("leaf".into());
        for i in 0..depth {
            v = match kinds.get(i).copied().unwrap_or(0) % 2 {
                0 => Amf0Value::Object(HashMap::from([("k".to_string(), v)])),
                _ => Amf0Value::StrictArray(vec![Amf0Value::Number(1.0), v]),
            };
        }
        v
    }

    #[test]
    fn a_connect_result_passes() {
        let info = Amf0Value::Object(HashMap::from([
            ("level".to_string(), Amf0Value::Utf8String("status".into())),
            (
                "code".to_string(),
                Amf0Value::Utf8String("NetConnection.Connect.Success".into()),
            ),
            ("data".to_string(), Amf0Value::StrictArray(vec![])),
        ]));
        let body = serialize(&[
            Amf0Value::Utf8String("_result".into()),
            Amf0Value::Number(1.0),
            Amf0Value::Object(HashMap::from([(
                "fmsVer".to_string(),
                Amf0Value::Utf8String("FMS/3,0,1,123".into()),
            )])),
            info,
        ]);
        assert_eq!(check_depth(&body, MAX_DEPTH), Ok(()));
    }

    #[test]
    fn objects_nested_past_the_limit_are_refused_at_the_first_level_too_deep() {
        assert_eq!(check_depth(&nested_objects(MAX_DEPTH), MAX_DEPTH), Ok(()));
        assert_eq!(
            check_depth(&nested_objects(MAX_DEPTH + 1), MAX_DEPTH),
            Err(Amf0Error::TooDeep {
                limit: MAX_DEPTH,
                offset: 4 * MAX_DEPTH
            })
        );
        // What would overflow the stack in rml_amf0; truncated, as a hostile server may send it.
        let deep = nested_objects(5000);
        assert!(check_depth(&deep, MAX_DEPTH).is_err());
        assert!(check_depth(&deep[..deep.len() / 2], MAX_DEPTH).is_err());
    }

    #[test]
    fn every_container_counts_as_a_level() {
        // ECMA array: count, then properties like an object.
        let ecma = b"\x08\x00\x00\x00\x01\x00\x01a\x08\x00\x00\x00\x00\x00\x00\x09\x00\x00\x09";
        assert_eq!(check_depth(ecma, 2), Ok(()));
        assert!(check_depth(ecma, 1).is_err());
        // Strict arrays: [[1.0]].
        let strict = b"\x0a\x00\x00\x00\x01\x0a\x00\x00\x00\x01\x00\x3f\xf0\0\0\0\0\0\0";
        assert_eq!(check_depth(strict, 2), Ok(()));
        assert!(check_depth(strict, 1).is_err());
        // Typed object: class name, then properties.
        let typed = b"\x10\x00\x01C\x00\x01a\x10\x00\x01C\x00\x00\x09\x00\x00\x09";
        assert_eq!(check_depth(typed, 2), Ok(()));
        assert!(check_depth(typed, 1).is_err());
        // Mixed, past the values before them.
        let mixed = serialize(&[
            Amf0Value::Utf8String("x".into()),
            Amf0Value::Number(2.0),
            nested_value(3, &[0, 1, 0]),
        ]);
        assert_eq!(check_depth(&mixed, 3), Ok(()));
        assert!(check_depth(&mixed, 2).is_err());
    }

    #[test]
    fn a_strict_array_ends_where_rml_amf0_ends_it() {
        // An array announcing 3 values ended by 0x09 after one: rml_amf0 returns to the
        // enclosing object, whose next property holds the deeper object.
        let mut v = b"\x03\x00\x01a\x0a\x00\x00\x00\x03\x05\x09\x00\x01b".to_vec();
        v.extend_from_slice(b"\x03\x00\x00\x09\x00\x00\x09");
        assert_eq!(check_depth(&v, 2), Ok(()));
        assert!(check_depth(&v, 1).is_err());
    }

    #[test]
    fn the_amf3_switch_and_unknown_markers_end_the_walk() {
        assert_eq!(check_depth(b"\x11\x0a\x0a\x0a\x0a", 0), Ok(()));
        assert_eq!(check_depth(b"\xff\x03\x03\x03", 0), Ok(()));
        assert!(rml_amf0::deserialize(&mut std::io::Cursor::new(b"\x11\x0a")).is_err());
    }

    #[test]
    fn amf0_bodies_by_message_type() {
        assert_eq!(amf0_body(20, b"\x02"), Some(&b"\x02"[..]));
        assert_eq!(amf0_body(18, b"\x02"), Some(&b"\x02"[..]));
        assert_eq!(amf0_body(15, b"\x02"), Some(&b"\x02"[..]));
        assert_eq!(amf0_body(17, b"\x00\x02"), Some(&b"\x02"[..]));
        assert_eq!(amf0_body(17, b"\x02"), Some(&b"\x02"[..]));
        assert_eq!(amf0_body(9, b"\x17"), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Arbitrary bytes, a limit of any size: an answer, never a panic.
        #[test]
        fn never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..2000),
            limit in 0usize..80,
        ) {
            let _ = check_depth(&bytes, limit);
        }

        /// Arbitrary bytes with many container markers, the shape that nests.
        #[test]
        fn never_panics_on_container_heavy_input(
            bytes in proptest::collection::vec(
                prop_oneof![Just(0x03u8), Just(0x08), Just(0x09), Just(0x0a), Just(0x10), Just(0), any::<u8>()],
                0..2000,
            ),
        ) {
            let _ = check_depth(&bytes, MAX_DEPTH);
        }

        /// Well-formed values of a known depth: refused exactly when deeper than the limit,
        /// and what passes parses in rml_amf0.
        #[test]
        fn depth_of_serialized_values(
            depth in 0usize..12,
            kinds in proptest::collection::vec(any::<u8>(), 12),
            limit in 0usize..12,
        ) {
            let body = serialize(&[Amf0Value::Number(1.0), nested_value(depth, &kinds)]);
            let checked = check_depth(&body, limit);
            prop_assert_eq!(checked.is_ok(), depth <= limit, "{:?}", checked);
            if checked.is_ok() {
                prop_assert!(rml_amf0::deserialize(&mut std::io::Cursor::new(&body)).is_ok());
            }
        }
    }
}
