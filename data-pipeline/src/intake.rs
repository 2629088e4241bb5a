//! Reading intake tables, CSV or Parquet, as a stream of rows of cells in the contract's
//! column order. Knows file names and formats; knows nothing of what the values mean.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, DictionaryArray, LargeStringArray, RecordBatch, StringArray,
    StringViewArray,
};
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};

use crate::report::Problem;

/// The intake's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Las,
    Schools,
    Conversion,
    Items,
    Pupils,
    Attendance,
    Annulments,
    Ta,
    Scripts,
    Marks,
}

impl Table {
    pub const ALL: [Table; 10] = [
        Table::Las,
        Table::Schools,
        Table::Conversion,
        Table::Items,
        Table::Pupils,
        Table::Attendance,
        Table::Annulments,
        Table::Ta,
        Table::Scripts,
        Table::Marks,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Las => "las",
            Table::Schools => "schools",
            Table::Conversion => "conversion",
            Table::Items => "items",
            Table::Pupils => "pupils",
            Table::Attendance => "attendance",
            Table::Annulments => "annulments",
            Table::Ta => "ta",
            Table::Scripts => "scripts",
            Table::Marks => "marks",
        }
    }

    /// The contract's columns, in order.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Table::Las => &["la_code", "name"],
            Table::Schools => &[
                "urn",
                "laestab",
                "name",
                "la_code",
                "phase",
                "type",
                "trust_uid",
                "trust_name",
            ],
            Table::Conversion => &["year", "subject", "raw_score", "scaled_score"],
            Table::Items => &["paper", "item", "max_mark"],
            Table::Pupils => &[
                "upn",
                "laestab",
                "surname",
                "forename",
                "dob",
                "gender",
                "reading_reg",
                "gps_reg",
                "maths_reg",
            ],
            Table::Attendance => &["upn", "paper", "code"],
            Table::Annulments => &["upn", "subject", "code"],
            Table::Ta => &["upn", "writing", "science"],
            Table::Scripts => &["upn", "paper", "page", "object_key", "sha256"],
            Table::Marks => &["upn", "paper", "item", "mark"],
        }
    }

    /// `attendance`, `annulments`, `ta` and `scripts` may be absent, meaning none.
    pub fn required(self) -> bool {
        !matches!(
            self,
            Table::Attendance | Table::Annulments | Table::Ta | Table::Scripts
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Parquet,
}

/// One table's file in an intake folder.
#[derive(Debug, Clone)]
pub struct TableFile {
    pub table: Table,
    pub path: PathBuf,
    pub format: Format,
    /// The file's name, as problems report it.
    pub name: String,
}

/// Find a table's file: `<name>.csv` or `<name>.parquet`, not both.
pub fn find(dir: &Path, table: Table) -> Result<Option<TableFile>, Problem> {
    let csv = dir.join(format!("{}.csv", table.name()));
    let pq = dir.join(format!("{}.parquet", table.name()));
    let file = |path: PathBuf, format| {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        TableFile {
            table,
            path,
            format,
            name,
        }
    };
    match (csv.is_file(), pq.is_file()) {
        (true, true) => Err(Problem::file(
            &format!("{}.csv", table.name()),
            format!(
                "both {0}.csv and {0}.parquet are present; keep one",
                table.name()
            ),
        )),
        (true, false) => Ok(Some(file(csv, Format::Csv))),
        (false, true) => Ok(Some(file(pq, Format::Parquet))),
        (false, false) if table.required() => Err(Problem::file(
            &format!("{}.csv", table.name()),
            format!(
                "required table {0} is missing: expected {0}.csv or {0}.parquet",
                table.name()
            ),
        )),
        (false, false) => Ok(None),
    }
}

/// One cell of a row: text from CSV or a string column, or an integer from a Parquet
/// integer column (kept as a number so the hot path never formats and re-parses it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell<'a> {
    Str(&'a str),
    Int(i64),
    Null,
}

impl Cell<'_> {
    /// The text of the cell, for messages and for text fields.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Cell::Str(s) => std::borrow::Cow::Borrowed(s),
            Cell::Int(i) => std::borrow::Cow::Owned(i.to_string()),
            Cell::Null => std::borrow::Cow::Borrowed(""),
        }
    }

    /// An integer in `range`, with a reason when it is not.
    pub fn int(&self) -> Result<i64, String> {
        match self {
            Cell::Int(i) => Ok(*i),
            Cell::Str(s) => s
                .trim()
                .parse::<i64>()
                .map_err(|_| "not a whole number".to_string()),
            Cell::Null => Err("missing: a whole number is required".into()),
        }
    }
}

/// Something went wrong reading a file as a whole (not a cell): unreadable, bad header.
pub type FileError = Problem;

/// Read every row of a table, calling `f(row, cells)` with cells in the contract's column
/// order. Missing columns are a file-level problem; extra columns are ignored.
pub fn for_each_row(
    tf: &TableFile,
    mut f: impl FnMut(u64, &[Cell<'_>]),
    bad_row: &mut dyn FnMut(Problem),
) -> Result<(), FileError> {
    match tf.format {
        Format::Csv => read_csv(tf, &mut f, bad_row),
        Format::Parquet => {
            let (reader, cols) = open_parquet(tf, None)?;
            let mut row: u64 = 0;
            for batch in reader {
                let batch = batch
                    .map_err(|e| Problem::file(&tf.name, format!("unreadable Parquet: {e}")))?;
                let columns = StrColumns::new(&batch, &cols);
                let mut cells = vec![Cell::Null; cols.len()];
                for i in 0..batch.num_rows() {
                    row += 1;
                    columns.fill(i, &mut cells);
                    f(row, &cells);
                }
            }
            Ok(())
        }
    }
}

fn read_csv(
    tf: &TableFile,
    f: &mut impl FnMut(u64, &[Cell<'_>]),
    bad_row: &mut dyn FnMut(Problem),
) -> Result<(), FileError> {
    let file =
        File::open(&tf.path).map_err(|e| Problem::file(&tf.name, format!("cannot open: {e}")))?;
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(std::io::BufReader::with_capacity(1 << 20, file));
    let headers = rdr
        .byte_headers()
        .map_err(|e| Problem::file(&tf.name, format!("unreadable header: {e}")))?
        .clone();
    let names: Vec<String> = headers
        .iter()
        .map(|h| {
            String::from_utf8_lossy(h)
                .trim_start_matches('\u{feff}')
                .trim()
                .to_string()
        })
        .collect();
    let idx = column_indices(tf, &names)?;
    let mut rec = csv::ByteRecord::new();
    let mut row: u64 = 0;
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                bad_row(Problem {
                    file: tf.name.clone(),
                    row: Some(row + 1),
                    column: None,
                    value: None,
                    reason: format!("malformed CSV: {e}"),
                });
                return Ok(());
            }
        }
        row += 1;
        if rec.len() != names.len() {
            bad_row(Problem {
                file: tf.name.clone(),
                row: Some(row),
                column: None,
                value: None,
                reason: format!("has {} fields, the header has {}", rec.len(), names.len()),
            });
            continue;
        }
        let mut ok = true;
        // No table has more than 9 columns; a stack array avoids an allocation per row.
        let mut cells = [Cell::Null; 9];
        for (c, &i) in idx.iter().enumerate() {
            match std::str::from_utf8(&rec[i]) {
                Ok(s) => cells[c] = Cell::Str(s),
                Err(_) => {
                    bad_row(Problem::cell(
                        &tf.name,
                        row,
                        tf.table.columns()[c],
                        &String::from_utf8_lossy(&rec[i]),
                        "not valid UTF-8",
                    ));
                    ok = false;
                }
            }
        }
        if ok {
            f(row, &cells[..idx.len()]);
        }
    }
    Ok(())
}

/// Positions of the contract's columns among a file's header names.
fn column_indices(tf: &TableFile, names: &[String]) -> Result<Vec<usize>, FileError> {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for col in tf.table.columns() {
        match names.iter().position(|n| n == col) {
            Some(i) => out.push(i),
            None => missing.push(*col),
        }
    }
    if !missing.is_empty() {
        return Err(Problem {
            file: tf.name.clone(),
            row: None,
            column: Some(missing.join(",")),
            value: None,
            reason: format!(
                "header lacks column(s) {}; expected {}",
                missing.join(", "),
                tf.table.columns().join(",")
            ),
        });
    }
    Ok(out)
}

/// Open a Parquet table projected onto the contract's columns, asking for string columns
/// as dictionaries (cheap when the file is dictionary-encoded, as marks files are).
/// Returns the reader and, per contract column, its index in the projected batch.
pub fn open_parquet(
    tf: &TableFile,
    row_groups: Option<Vec<usize>>,
) -> Result<
    (
        parquet::arrow::arrow_reader::ParquetRecordBatchReader,
        Vec<usize>,
    ),
    FileError,
> {
    let bad =
        |e: &dyn std::fmt::Display| Problem::file(&tf.name, format!("unreadable Parquet: {e}"));
    let file =
        File::open(&tf.path).map_err(|e| Problem::file(&tf.name, format!("cannot open: {e}")))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(&e))?;
    let names: Vec<String> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let idx = column_indices(tf, &names)?;
    // Hint dictionary decoding for string columns.
    let fields: Vec<Arc<Field>> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Arc::new(Field::new(
                f.name(),
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                f.is_nullable(),
            )),
            _ => f.clone(),
        })
        .collect();
    let hinted = Arc::new(Schema::new(fields));
    let file =
        File::open(&tf.path).map_err(|e| Problem::file(&tf.name, format!("cannot open: {e}")))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(
        file,
        ArrowReaderOptions::new().with_schema(hinted),
    )
    .or_else(|_| {
        // Some physical types cannot take the hint; read them as they are.
        File::open(&tf.path)
            .map_err(|e| parquet::errors::ParquetError::General(e.to_string()))
            .and_then(ParquetRecordBatchReaderBuilder::try_new)
    })
    .map_err(|e| bad(&e))?;
    let mut sorted = idx.clone();
    sorted.sort_unstable();
    let mask = ProjectionMask::roots(builder.parquet_schema(), sorted.iter().copied());
    // After projection, columns keep file order: map each contract column to its position.
    let projected: Vec<usize> = idx
        .iter()
        .map(|i| sorted.iter().position(|s| s == i).expect("present"))
        .collect();
    let mut builder = builder.with_projection(mask).with_batch_size(64 * 1024);
    if let Some(rg) = row_groups {
        builder = builder.with_row_groups(rg);
    }
    let reader = builder.build().map_err(|e| bad(&e))?;
    Ok((reader, projected))
}

/// Number of rows in each row group of a Parquet file.
pub fn parquet_row_groups(tf: &TableFile) -> Result<Vec<u64>, FileError> {
    let file =
        File::open(&tf.path).map_err(|e| Problem::file(&tf.name, format!("cannot open: {e}")))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Problem::file(&tf.name, format!("unreadable Parquet: {e}")))?;
    Ok(builder
        .metadata()
        .row_groups()
        .iter()
        .map(|rg| rg.num_rows() as u64)
        .collect())
}

/// Typed access to a batch's columns as cells.
pub struct StrColumns {
    cols: Vec<Col>,
}

enum Col {
    Utf8(StringArray),
    Large(LargeStringArray),
    View(StringViewArray),
    Dict(DictionaryArray<Int32Type>, StringArray),
    Int(arrow::array::PrimitiveArray<Int64Type>),
    Text(StringArray),
}

impl StrColumns {
    pub fn new(batch: &RecordBatch, order: &[usize]) -> StrColumns {
        let cols = order
            .iter()
            .map(|&i| {
                let a: &ArrayRef = batch.column(i);
                match a.data_type() {
                    DataType::Utf8 => Col::Utf8(a.as_string::<i32>().clone()),
                    DataType::LargeUtf8 => Col::Large(a.as_string::<i64>().clone()),
                    DataType::Utf8View => Col::View(a.as_string_view().clone()),
                    DataType::Dictionary(_, _) => {
                        let d = arrow::compute::cast(
                            a,
                            &DataType::Dictionary(
                                Box::new(DataType::Int32),
                                Box::new(DataType::Utf8),
                            ),
                        )
                        .map(|d| d.as_dictionary::<Int32Type>().clone());
                        match d {
                            Ok(d) => {
                                let values = d.values().as_string::<i32>().clone();
                                Col::Dict(d, values)
                            }
                            Err(_) => Col::Text(to_text(a)),
                        }
                    }
                    t if t.is_integer() => match arrow::compute::cast(a, &DataType::Int64) {
                        Ok(c) => Col::Int(c.as_primitive::<Int64Type>().clone()),
                        Err(_) => Col::Text(to_text(a)),
                    },
                    _ => Col::Text(to_text(a)),
                }
            })
            .collect();
        StrColumns { cols }
    }

    #[inline]
    pub fn cell(&self, c: usize, i: usize) -> Cell<'_> {
        match &self.cols[c] {
            Col::Utf8(a) | Col::Text(a) => {
                if a.is_null(i) {
                    Cell::Null
                } else {
                    Cell::Str(a.value(i))
                }
            }
            Col::Large(a) => {
                if a.is_null(i) {
                    Cell::Null
                } else {
                    Cell::Str(a.value(i))
                }
            }
            Col::View(a) => {
                if a.is_null(i) {
                    Cell::Null
                } else {
                    Cell::Str(a.value(i))
                }
            }
            Col::Dict(d, values) => match d.key(i) {
                Some(k) => Cell::Str(values.value(k)),
                None => Cell::Null,
            },
            Col::Int(a) => {
                if a.is_null(i) {
                    Cell::Null
                } else {
                    Cell::Int(a.value(i))
                }
            }
        }
    }

    /// The dictionary key of a dictionary column's cell: equal keys mean equal values
    /// within one batch, which lets hot loops skip string comparisons.
    #[inline]
    pub fn dict_key(&self, c: usize, i: usize) -> Option<usize> {
        match &self.cols[c] {
            Col::Dict(d, _) => d.key(i),
            _ => None,
        }
    }

    pub fn fill<'a>(&'a self, i: usize, cells: &mut [Cell<'a>]) {
        for (c, cell) in cells.iter_mut().enumerate() {
            *cell = self.cell(c, i);
        }
    }
}

fn to_text(a: &ArrayRef) -> StringArray {
    arrow::compute::cast(a, &DataType::Utf8)
        .map(|c| c.as_string::<i32>().clone())
        .unwrap_or_else(|_| StringArray::from(vec![None::<&str>; a.len()]))
}
