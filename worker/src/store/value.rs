//! Property values: checking JSON against a [`PropType`], and moving values
//! between JSON and Arrow columns.
//!
//! Values are normalised once, on the way in (dates to `YYYY-MM-DD`,
//! date-times to UTC with microseconds, blobs to canonical base64), so the
//! in-memory graph, the Lance tables and the responses always agree.

use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, BooleanBuilder, Date32Builder, Float32Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, ListArray};
use arrow_buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, TimeUnit};
use base64::Engine;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde_json::Value;

use crate::contract::PropType;

const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

pub fn arrow_type(ty: &PropType) -> DataType {
    match ty {
        PropType::String => DataType::Utf8,
        PropType::Bool => DataType::Boolean,
        PropType::I32 => DataType::Int32,
        PropType::I64 => DataType::Int64,
        PropType::F32 => DataType::Float32,
        PropType::F64 => DataType::Float64,
        PropType::Date => DataType::Date32,
        PropType::DateTime => DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC"))),
        PropType::Blob => DataType::Binary,
        PropType::List(inner) => DataType::List(Arc::new(Field::new("item", arrow_type(inner), true))),
    }
}

/// Checks `v` against `ty` and returns its canonical form. `null` is not
/// handled here: optionality is the caller's business.
pub fn normalize(ty: &PropType, v: &Value) -> Result<Value, String> {
    let bad = || format!("expected {ty}, got {}", short(v));
    Ok(match ty {
        PropType::String => Value::String(v.as_str().ok_or_else(bad)?.to_owned()),
        PropType::Bool => Value::Bool(v.as_bool().ok_or_else(bad)?),
        PropType::I32 => {
            let n = v.as_i64().ok_or_else(bad)?;
            i32::try_from(n).map_err(|_| format!("{n} is out of range for I32"))?;
            Value::from(n)
        }
        PropType::I64 => Value::from(v.as_i64().ok_or_else(bad)?),
        PropType::F64 => {
            let f = v.as_f64().ok_or_else(bad)?;
            serde_json::Number::from_f64(f).map(Value::Number).ok_or_else(bad)?
        }
        // Rounded to what the F32 column stores, so a value reads back the
        // same before and after a restart, and an export re-ingests exactly.
        PropType::F32 => {
            let f = v.as_f64().ok_or_else(bad)?;
            let stored = f as f32;
            if stored.is_infinite() {
                return Err(format!("{f} is out of range for F32"));
            }
            serde_json::Number::from_f64(f64::from(stored)).map(Value::Number).ok_or_else(bad)?
        }
        PropType::Date => Value::String(parse_date(v.as_str().ok_or_else(bad)?)?.format("%Y-%m-%d").to_string()),
        PropType::DateTime => Value::String(format_datetime(parse_datetime(v.as_str().ok_or_else(bad)?)?)),
        PropType::Blob => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().ok_or_else(bad)?)
                .map_err(|e| format!("expected base64 for Blob: {e}"))?;
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        PropType::List(inner) => {
            let items = v.as_array().ok_or_else(bad)?;
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                if item.is_null() {
                    return Err(format!("list element {i} is null"));
                }
                out.push(normalize(inner, item).map_err(|e| format!("list element {i}: {e}"))?);
            }
            Value::Array(out)
        }
    })
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!("{}…", &s[..s.char_indices().nth(40).map_or(s.len(), |(i, _)| i)])
    } else {
        s
    }
}

pub fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| format!("expected a date as YYYY-MM-DD, got {s:?}"))
}

/// An RFC 3339 date-time, normalised to UTC. Its UTC form must still be
/// RFC 3339 (years 0000–9999): an offset can push a valid local time past
/// either end (`9999-12-31T23:59:59-23:59`), and such a value could be
/// stored but never written back out.
pub fn parse_datetime(s: &str) -> Result<DateTime<Utc>, String> {
    use chrono::Datelike;
    let d = DateTime::parse_from_rfc3339(s).map(|d| d.with_timezone(&Utc)).map_err(|_| format!("expected an RFC 3339 date-time, got {s:?}"))?;
    if !(0..=9999).contains(&d.year()) {
        return Err(format!("{s:?} is outside years 0000-9999 once in UTC"));
    }
    Ok(d)
}

pub fn format_datetime(d: DateTime<Utc>) -> String {
    d.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub fn date_to_days(d: NaiveDate) -> i32 {
    d.num_days_from_ce_compat() - UNIX_EPOCH_DAYS_FROM_CE
}

trait DaysFromCe {
    fn num_days_from_ce_compat(&self) -> i32;
}

impl DaysFromCe for NaiveDate {
    fn num_days_from_ce_compat(&self) -> i32 {
        use chrono::Datelike;
        self.num_days_from_ce()
    }
}

/// Builds one Arrow column from already-normalised values (`None` = null).
pub fn to_array(ty: &PropType, vals: &[Option<&Value>]) -> Result<ArrayRef, String> {
    macro_rules! build {
        ($builder:expr, $conv:expr) => {{
            let mut b = $builder;
            for v in vals {
                match v {
                    None | Some(Value::Null) => b.append_null(),
                    Some(v) => b.append_value($conv(*v).ok_or_else(|| format!("value {} is not a {ty}", short(v)))?),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    Ok(match ty {
        PropType::String => build!(StringBuilder::new(), |v: &Value| v.as_str().map(str::to_owned)),
        PropType::Bool => build!(BooleanBuilder::new(), |v: &Value| v.as_bool()),
        PropType::I32 => build!(Int32Builder::new(), |v: &Value| v.as_i64().and_then(|n| i32::try_from(n).ok())),
        PropType::I64 => build!(Int64Builder::new(), |v: &Value| v.as_i64()),
        PropType::F32 => build!(Float32Builder::new(), |v: &Value| v.as_f64().map(|f| f as f32)),
        PropType::F64 => build!(Float64Builder::new(), |v: &Value| v.as_f64()),
        PropType::Date => build!(Date32Builder::new(), |v: &Value| v.as_str().and_then(|s| parse_date(s).ok()).map(date_to_days)),
        PropType::DateTime => build!(
            TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            |v: &Value| v.as_str().and_then(|s| parse_datetime(s).ok()).map(|d| d.timestamp_micros())
        ),
        PropType::Blob => build!(BinaryBuilder::new(), |v: &Value| v
            .as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())),
        PropType::List(inner) => {
            let mut flat: Vec<Option<&Value>> = Vec::new();
            let mut offsets: Vec<i32> = vec![0];
            let mut valid = Vec::with_capacity(vals.len());
            for v in vals {
                match v {
                    None | Some(Value::Null) => valid.push(false),
                    Some(Value::Array(items)) => {
                        flat.extend(items.iter().map(Some));
                        valid.push(true);
                    }
                    Some(other) => return Err(format!("value {} is not a {ty}", short(other))),
                }
                offsets.push(i32::try_from(flat.len()).map_err(|_| "list column too large".to_string())?);
            }
            let values = to_array(inner, &flat)?;
            let field = Arc::new(Field::new("item", arrow_type(inner), true));
            let nulls = if valid.iter().all(|v| *v) { None } else { Some(NullBuffer::from(valid)) };
            Arc::new(
                ListArray::try_new(field, OffsetBuffer::new(ScalarBuffer::from(offsets)), values, nulls)
                    .map_err(|e| e.to_string())?,
            )
        }
    })
}

/// Reads row `i` of an Arrow column back into canonical JSON.
pub fn from_array(ty: &PropType, arr: &dyn Array, i: usize) -> Value {
    if arr.is_null(i) {
        return Value::Null;
    }
    match ty {
        PropType::String => Value::String(arr.as_string::<i32>().value(i).to_owned()),
        PropType::Bool => Value::Bool(arr.as_boolean().value(i)),
        PropType::I32 => Value::from(arr.as_primitive::<Int32Type>().value(i)),
        PropType::I64 => Value::from(arr.as_primitive::<Int64Type>().value(i)),
        PropType::F32 => float(f64::from(arr.as_primitive::<Float32Type>().value(i))),
        PropType::F64 => float(arr.as_primitive::<Float64Type>().value(i)),
        PropType::Date => {
            let days = arr.as_primitive::<Date32Type>().value(i);
            NaiveDate::from_num_days_from_ce_opt(days + UNIX_EPOCH_DAYS_FROM_CE)
                .map_or(Value::Null, |d| Value::String(d.format("%Y-%m-%d").to_string()))
        }
        PropType::DateTime => {
            let us = arr.as_primitive::<TimestampMicrosecondType>().value(i);
            DateTime::from_timestamp_micros(us).map_or(Value::Null, |d| Value::String(format_datetime(d)))
        }
        PropType::Blob => Value::String(base64::engine::general_purpose::STANDARD.encode(arr.as_binary::<i32>().value(i))),
        PropType::List(inner) => {
            let items = arr.as_list::<i32>().value(i);
            Value::Array((0..items.len()).map(|j| from_array(inner, items.as_ref(), j)).collect())
        }
    }
}

fn float(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normalises_and_rejects() {
        assert_eq!(normalize(&PropType::I64, &json!(5)).unwrap(), json!(5));
        assert!(normalize(&PropType::I64, &json!("5")).is_err());
        assert!(normalize(&PropType::I32, &json!(1u64 << 40)).unwrap_err().contains("out of range"));
        assert_eq!(normalize(&PropType::F64, &json!(2)).unwrap(), json!(2.0));
        assert_eq!(normalize(&PropType::F32, &json!(0.1)).unwrap(), json!(f64::from(0.1f32)), "what the column stores");
        assert!(normalize(&PropType::F32, &json!(1e300)).unwrap_err().contains("out of range"));
        assert_eq!(normalize(&PropType::Date, &json!("2024-02-29")).unwrap(), json!("2024-02-29"));
        assert!(normalize(&PropType::Date, &json!("2023-02-29")).is_err());
        assert_eq!(
            normalize(&PropType::DateTime, &json!("2024-01-01T02:00:00+02:00")).unwrap(),
            json!("2024-01-01T00:00:00.000000Z")
        );
        assert!(normalize(&PropType::Blob, &json!("!!")).is_err());
        let list = PropType::List(Box::new(PropType::I32));
        assert_eq!(normalize(&list, &json!([1, 2])).unwrap(), json!([1, 2]));
        assert!(normalize(&list, &json!([1, null])).unwrap_err().contains("element 1"));
    }

    #[test]
    fn arrow_round_trip_for_every_type() {
        let cases = [
            (PropType::String, json!("x' OR 1=1 --")),
            (PropType::Bool, json!(true)),
            (PropType::I32, json!(-7)),
            (PropType::I64, json!(1i64 << 50)),
            (PropType::F32, json!(1.5)),
            (PropType::F64, json!(-2.25)),
            (PropType::Date, json!("1969-12-31")),
            (PropType::DateTime, json!("2024-05-06T07:08:09.123456Z")),
            (PropType::Blob, json!("AAEC")),
            (PropType::List(Box::new(PropType::String)), json!(["a", "b"])),
            (PropType::List(Box::new(PropType::Date)), json!([])),
        ];
        for (ty, v) in cases {
            let arr = to_array(&ty, &[Some(&v), None]).unwrap();
            assert_eq!(arr.data_type(), &arrow_type(&ty));
            assert_eq!(from_array(&ty, arr.as_ref(), 0), v, "{ty}");
            assert_eq!(from_array(&ty, arr.as_ref(), 1), Value::Null, "{ty}");
        }
    }
}
