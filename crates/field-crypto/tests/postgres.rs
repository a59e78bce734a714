//! `Sealed` through a real PostgreSQL, planted plaintext, migration mode, and the re-encryption
//! job running while the application keeps reading.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use field_crypto::{Context, CryptoError, KeyMaterial, Keyring, Sealed, key_id_of};
use testkit::{Role, Template, fresh_database};

fn template() -> Template {
    Template::new(
        "field_crypto_secrets",
        "CREATE TABLE secrets (id bigserial PRIMARY KEY, tenant_id uuid NOT NULL, value bytea);",
    )
}

fn ctx(tenant: &str, id: i64) -> Context {
    Context::new(tenant, "secrets", "value", id.to_be_bytes())
}

fn keyring(ids: &[u32], primary: u32) -> Keyring {
    let mut k = Keyring::new();
    for id in ids {
        k.add_key(*id, &KeyMaterial::from_bytes(Box::new([*id as u8; 32])))
            .unwrap();
    }
    k.promote(primary).unwrap();
    k
}

const TENANT: &str = "7f1c1f5e-8d2a-4c55-9a59-1f3f2c6a0b11";

#[tokio::test]
async fn sealed_round_trips_through_bytea_and_null_stays_null() {
    let db = fresh_database(&template()).await;
    let pool = db.pool(Role::Owner, 2).await;
    let k = keyring(&[1], 1);
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO secrets (tenant_id, value) VALUES ($1::uuid, NULL) RETURNING id",
    )
    .bind(TENANT)
    .fetch_one(&pool)
    .await
    .unwrap();
    let none: Option<Sealed> = sqlx::query_scalar("SELECT value FROM secrets WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(none.is_none());
    let sealed = Sealed::seal(&k, b"", &ctx(TENANT, id)).unwrap();
    sqlx::query("UPDATE secrets SET value = $1 WHERE id = $2")
        .bind(&sealed)
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let back: Option<Sealed> = sqlx::query_scalar("SELECT value FROM secrets WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    let back = back.unwrap();
    assert_eq!(back.open(&k, &ctx(TENANT, id)).unwrap().as_bytes(), b"");
    // The raw column holds no plaintext and is not the same bytes as another sealing.
    assert_ne!(back, Sealed::seal(&k, b"", &ctx(TENANT, id)).unwrap());
}

#[tokio::test]
async fn plaintext_planted_in_an_encrypted_column_is_rejected() {
    let db = fresh_database(&template()).await;
    let pool = db.pool(Role::Owner, 2).await;
    sqlx::query(
        "INSERT INTO secrets (tenant_id, value) VALUES ($1::uuid, 'JBSWY3DPEHPK3PXP'::bytea)",
    )
    .bind(TENANT)
    .execute(&pool)
    .await
    .unwrap();
    let err = sqlx::query_scalar::<_, Sealed>("SELECT value FROM secrets")
        .fetch_one(&pool)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("plaintext found in an encrypted column"),
        "{err}"
    );
    // Migration mode accepts it, explicitly, and says so.
    let raw: Vec<u8> = sqlx::query_scalar("SELECT value FROM secrets")
        .fetch_one(&pool)
        .await
        .unwrap();
    let k = keyring(&[1], 1);
    let (value, legacy) = k.open_migrating(&raw, &ctx(TENANT, 1)).unwrap();
    assert!(legacy);
    assert_eq!(value.as_bytes(), b"JBSWY3DPEHPK3PXP");
    // ...but never lets a tampered ciphertext through as "legacy".
    let mut tampered = k.seal(b"x", &ctx(TENANT, 1)).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert_eq!(
        k.open_migrating(&tampered, &ctx(TENANT, 1)).err(),
        Some(CryptoError::DecryptionFailed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencryption_job_is_batched_resumable_and_reads_keep_working() {
    use field_crypto::ReencryptJob;
    let db = fresh_database(&template()).await;
    let pool = db.pool(Role::Owner, 4).await;
    let old = keyring(&[1], 1);
    for _ in 0..300 {
        let id: i64 =
            sqlx::query_scalar("INSERT INTO secrets (tenant_id) VALUES ($1::uuid) RETURNING id")
                .bind(TENANT)
                .fetch_one(&pool)
                .await
                .unwrap();
        let sealed = Sealed::seal(&old, format!("seed-{id}").as_bytes(), &ctx(TENANT, id)).unwrap();
        sqlx::query("UPDATE secrets SET value = $1 WHERE id = $2")
            .bind(sealed)
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
    }
    // Rotate: key 2 becomes primary, key 1 stays decrypt-only while the job runs.
    let rotated = Arc::new(keyring(&[1, 2], 2));

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (pool, k, stop, reads) = (pool.clone(), rotated.clone(), stop.clone(), reads.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let rows: Vec<(i64, Sealed)> =
                    sqlx::query_as("SELECT id, value FROM secrets ORDER BY random() LIMIT 20")
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                for (id, sealed) in rows {
                    let plain = sealed.open(&k, &ctx(TENANT, id)).unwrap();
                    assert_eq!(plain.as_bytes(), format!("seed-{id}").as_bytes());
                    reads.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };

    let job = ReencryptJob::new("secrets", "id", "tenant_id", "value")
        .unwrap()
        .batch_size(40)
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    // Three batches, then a "restart" that resumes from the saved cursor.
    let mut cursor = None;
    let mut resealed = 0;
    for _ in 0..3 {
        let p = job
            .run_batch(&mut conn, &rotated, ctx, cursor)
            .await
            .unwrap();
        resealed += p.resealed;
        cursor = p.cursor;
    }
    assert_eq!(resealed, 120);
    drop(conn);
    let mut conn = pool.acquire().await.unwrap();
    loop {
        let p = job
            .run_batch(&mut conn, &rotated, ctx, cursor)
            .await
            .unwrap();
        resealed += p.resealed;
        cursor = p.cursor;
        if p.done {
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    reader.await.unwrap();
    assert_eq!(resealed, 300);
    assert!(
        reads.load(Ordering::SeqCst) > 0,
        "the reader never ran alongside the job"
    );

    // Everything is under key 2 now; key 1 can be retired and every value still opens.
    let rows: Vec<(i64, Sealed)> = sqlx::query_as("SELECT id, value FROM secrets")
        .fetch_all(&pool)
        .await
        .unwrap();
    let mut k = keyring(&[1, 2], 2);
    k.retire(1).unwrap();
    for (id, sealed) in rows {
        assert_eq!(key_id_of(sealed.as_bytes()).unwrap(), 2);
        assert_eq!(
            sealed.open(&k, &ctx(TENANT, id)).unwrap().as_bytes(),
            format!("seed-{id}").as_bytes()
        );
    }
    // A second pass finds nothing to do.
    let mut conn = pool.acquire().await.unwrap();
    let p = job.run_batch(&mut conn, &k, ctx, None).await.unwrap();
    assert_eq!((p.scanned, p.resealed), (40, 0));
    assert!(ReencryptJob::new("secrets; drop table x", "id", "tenant_id", "value").is_err());
}

#[test]
fn a_batch_size_of_zero_or_less_is_refused() {
    use field_crypto::{ReencryptError, ReencryptJob};
    let job = ReencryptJob::new("secrets", "id", "tenant_id", "value").unwrap();
    for rows in [0, -1, i64::MIN] {
        assert!(matches!(
            job.clone().batch_size(rows),
            Err(ReencryptError::InvalidBatchSize)
        ));
    }
    // Positive control: one row per batch is a valid job.
    assert!(job.batch_size(1).is_ok());
}

/// The attack: a value parked at the smallest possible id (`i64::MIN`, which the old first
/// batch's `id > i64::MIN` skipped) stays under the old key after the job says `done`, and
/// retiring that key destroys it. The job must start at the true minimum and report `done`
/// only after the row at the top edge (`i64::MAX`) has been scanned.
#[tokio::test]
async fn reencryption_job_covers_the_smallest_and_largest_ids_before_done() {
    use field_crypto::ReencryptJob;
    let db = fresh_database(&template()).await;
    let pool = db.pool(Role::Owner, 2).await;
    let old = keyring(&[1], 1);
    let ids = [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX];
    for id in ids {
        let sealed = Sealed::seal(&old, format!("seed-{id}").as_bytes(), &ctx(TENANT, id)).unwrap();
        sqlx::query("INSERT INTO secrets (id, tenant_id, value) VALUES ($1, $2::uuid, $3)")
            .bind(id)
            .bind(TENANT)
            .bind(sealed)
            .execute(&pool)
            .await
            .unwrap();
    }
    let rotated = keyring(&[1, 2], 2);
    let job = ReencryptJob::new("secrets", "id", "tenant_id", "value")
        .unwrap()
        .batch_size(2)
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let mut cursor = None;
    let mut cursors = Vec::new();
    let (mut scanned, mut resealed) = (0, 0);
    loop {
        let p = job
            .run_batch(&mut conn, &rotated, ctx, cursor)
            .await
            .unwrap();
        if p.done {
            assert_eq!(p.scanned, 0, "a batch that scanned rows reported done");
            break;
        }
        scanned += p.scanned;
        resealed += p.resealed;
        cursor = p.cursor;
        cursors.push(p.cursor.unwrap());
    }
    // The first batch began at i64::MIN; done came only after the batch holding i64::MAX.
    assert_eq!(cursors.first(), Some(&(i64::MIN + 1)));
    assert_eq!(cursors.last(), Some(&i64::MAX));
    assert_eq!((scanned, resealed), (7, 7));

    // With key 1 retired, every row, both edges included, still opens.
    let mut retired = keyring(&[1, 2], 2);
    retired.retire(1).unwrap();
    let rows: Vec<(i64, Sealed)> = sqlx::query_as("SELECT id, value FROM secrets ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), ids.len());
    for (id, sealed) in rows {
        assert_eq!(key_id_of(sealed.as_bytes()).unwrap(), 2, "row {id}");
        assert_eq!(
            sealed.open(&retired, &ctx(TENANT, id)).unwrap().as_bytes(),
            format!("seed-{id}").as_bytes()
        );
    }
}
