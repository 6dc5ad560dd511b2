//! Retention of old audit and ingestion data: `anchorpipe-ingest prune`.
//!
//! The work is done by the `anchorpipe_prune(interval)` function of the migrations,
//! which only the database owner can run (see `20261129000004_retention.sql`); this is
//! the thin client that parses the age, calls it and reports the counts.

use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;

/// The shortest age the database accepts (its floor, repeated here for a clear error
/// before connecting).
pub const MIN_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// What one prune removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct PruneCounts {
    pub outbox_deleted: i64,
    pub audit_deleted: i64,
    pub ingestions_deleted: i64,
}

/// Parses an age like `90d`, `2w` or `36h` (a whole number and one unit).
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?}: missing unit (use d, h or w, e.g. 90d)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a whole number and a unit, e.g. 90d"))?;
    let unit_secs = match unit {
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        "w" => 7 * 24 * 60 * 60,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use d, h or w)")),
    };
    let secs = number
        .checked_mul(unit_secs)
        .filter(|s| i64::try_from(*s).is_ok())
        .ok_or_else(|| format!("{text:?}: too large"))?;
    let age = Duration::from_secs(secs);
    if age < MIN_AGE {
        return Err(format!("{text:?}: shorter than the floor of 1 day"));
    }
    Ok(age)
}

/// Deletes what is older than `age` through `anchorpipe_prune`. Errors say plainly
/// when the login lacks the owner's rights.
pub async fn prune(pool: &PgPool, age: Duration) -> anyhow::Result<PruneCounts> {
    let secs = i64::try_from(age.as_secs())?;
    let result = sqlx::query_as::<_, PruneCounts>(
        "SELECT outbox_deleted, audit_deleted, ingestions_deleted \
         FROM anchorpipe_prune($1 * interval '1 second')",
    )
    .bind(secs)
    .fetch_one(pool)
    .await;
    match result {
        Ok(counts) => Ok(counts),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => {
            Err(anyhow::anyhow!(
                "not allowed to prune ({}): run `prune` with the database owner's \
                 DATABASE_URL (the one `migrate` uses), not a tenant login",
                e.message()
            ))
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42883") => {
            Err(anyhow::anyhow!(
                "anchorpipe_prune is missing ({}): run `anchorpipe-ingest migrate` first",
                e.message()
            ))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_with_a_unit_and_respect_the_floor() {
        assert_eq!(parse_age("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse_age("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_age("36h"), Ok(Duration::from_secs(36 * 3_600)));
        assert_eq!(parse_age("24h"), Ok(MIN_AGE));
        for bad in ["", "90", "d", "90s", "90m", "-1d", "1.5d", "23h", "0d"] {
            assert!(parse_age(bad).is_err(), "{bad:?} accepted");
        }
    }
}
