//! Compares embedded stores on Cassini's durable write pattern: many small records keyed by
//! (subscription, sequence), written in batches that each end with one fsync (group commit),
//! then deleted in batches as subscribers acknowledge them.
//!
//! `cargo run --release -- [RECORDS] [PAYLOAD_BYTES]` in `tools/storage-compare`, on the disk
//! the broker will use (a temporary directory under `$TMPDIR`).

use std::io::Write;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const TABLE: redb::TableDefinition<'static, (u64, u64), &[u8]> =
    redb::TableDefinition::new("messages");

/// One store under test.
trait Store {
    fn name(&self) -> &'static str;
    /// Writes the records and makes them durable with one sync.
    fn append(&mut self, records: &[(u64, u64)], payload: &[u8]) -> Result<()>;
    /// Deletes the records and makes that durable with one sync.
    fn delete(&mut self, records: &[(u64, u64)]) -> Result<()>;
}

struct Redb(redb::Database);

impl Store for Redb {
    fn name(&self) -> &'static str {
        "redb 2.6"
    }
    fn append(&mut self, records: &[(u64, u64)], payload: &[u8]) -> Result<()> {
        let tx = self.0.begin_write()?;
        {
            let mut table = tx.open_table(TABLE)?;
            for key in records {
                table.insert(*key, payload)?;
            }
        }
        tx.commit()?;
        Ok(())
    }
    fn delete(&mut self, records: &[(u64, u64)]) -> Result<()> {
        let tx = self.0.begin_write()?;
        {
            let mut table = tx.open_table(TABLE)?;
            for key in records {
                table.remove(*key)?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

struct Fjall {
    keyspace: fjall::Keyspace,
    partition: fjall::PartitionHandle,
}

fn fjall_key((subscription, sequence): (u64, u64)) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&subscription.to_be_bytes());
    key[8..].copy_from_slice(&sequence.to_be_bytes());
    key
}

impl Store for Fjall {
    fn name(&self) -> &'static str {
        "fjall 2.11"
    }
    fn append(&mut self, records: &[(u64, u64)], payload: &[u8]) -> Result<()> {
        let mut batch = self
            .keyspace
            .batch()
            .durability(Some(fjall::PersistMode::SyncData));
        for key in records {
            batch.insert(&self.partition, fjall_key(*key), payload);
        }
        batch.commit()?;
        Ok(())
    }
    fn delete(&mut self, records: &[(u64, u64)]) -> Result<()> {
        let mut batch = self
            .keyspace
            .batch()
            .durability(Some(fjall::PersistMode::SyncData));
        for key in records {
            batch.remove(&self.partition, fjall_key(*key));
        }
        batch.commit()?;
        Ok(())
    }
}

/// The floor any store is measured against: records appended to one file, one fdatasync per
/// batch, deletes appended as 16-byte tombstones. No index, no compaction, no recovery code.
struct AppendFile(std::fs::File);

impl Store for AppendFile {
    fn name(&self) -> &'static str {
        "append-only file"
    }
    fn append(&mut self, records: &[(u64, u64)], payload: &[u8]) -> Result<()> {
        let mut buffer = Vec::with_capacity(records.len() * (payload.len() + 20));
        for key in records {
            buffer.extend_from_slice(&fjall_key(*key));
            buffer.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buffer.extend_from_slice(payload);
        }
        self.0.write_all(&buffer)?;
        self.0.sync_data()?;
        Ok(())
    }
    fn delete(&mut self, records: &[(u64, u64)]) -> Result<()> {
        let mut buffer = Vec::with_capacity(records.len() * 16);
        for key in records {
            buffer.extend_from_slice(&fjall_key(*key));
        }
        self.0.write_all(&buffer)?;
        self.0.sync_data()?;
        Ok(())
    }
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(|entry| entry.ok())
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

fn run(
    store: &mut dyn Store,
    dir: &std::path::Path,
    records: u64,
    payload: usize,
    batch: usize,
) -> Result<()> {
    let payload = vec![0x5au8; payload];
    let keys: Vec<(u64, u64)> = (0..records).map(|i| (i % 16, i)).collect();
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    for chunk in keys.chunks(batch) {
        let commit = Instant::now();
        store.append(chunk, &payload)?;
        worst = worst.max(commit.elapsed());
    }
    let append = started.elapsed();
    let written = dir_bytes(dir);
    let started = Instant::now();
    for chunk in keys.chunks(batch) {
        store.delete(chunk)?;
    }
    let delete = started.elapsed();
    let commits = keys.len().div_ceil(batch) as f64;
    println!(
        "| {} | {} | {:.0} | {:.0} | {:.2} | {:.1} | {:.0} | {:.1} | {:.1} |",
        store.name(),
        batch,
        commits / append.as_secs_f64(),
        records as f64 / append.as_secs_f64(),
        append.as_secs_f64() * 1e3 / commits,
        worst.as_secs_f64() * 1e3,
        records as f64 / delete.as_secs_f64(),
        written as f64 / 1e6,
        dir_bytes(dir) as f64 / 1e6,
    );
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let records: u64 = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let payload: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    println!("{records} records of {payload} B payload, 16 subscriptions; every batch is one durable commit");
    println!();
    println!("| store | batch | commits/s | records/s | mean commit ms | worst commit ms | deletes/s | MB after writes | MB after deletes |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for batch in [1usize, 16, 256] {
        // Batch 1 costs one sync per record: run a tenth as many.
        let records = if batch == 1 { records / 10 } else { records };
        {
            let dir = tempfile::tempdir()?;
            let db = redb::Database::create(dir.path().join("db.redb"))?;
            run(&mut Redb(db), dir.path(), records, payload, batch)?;
        }
        {
            let dir = tempfile::tempdir()?;
            let keyspace = fjall::Config::new(dir.path().join("fjall")).open()?;
            let partition =
                keyspace.open_partition("messages", fjall::PartitionCreateOptions::default())?;
            run(
                &mut Fjall {
                    keyspace,
                    partition,
                },
                dir.path(),
                records,
                payload,
                batch,
            )?;
        }
        {
            let dir = tempfile::tempdir()?;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.path().join("log"))?;
            run(&mut AppendFile(file), dir.path(), records, payload, batch)?;
        }
    }
    Ok(())
}
