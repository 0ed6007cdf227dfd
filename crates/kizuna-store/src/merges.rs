//! Merging two contacts that are one person, with a record that explains and can undo it.

use crate::contacts::{get_in, insert, save};
use crate::db::{One, Tx, from_micros};
use crate::events::{NewEvent, append};
use crate::{Store, StoreError, args};
use chrono::{DateTime, Utc};
use kizuna_core::contact::Contact;
use kizuna_core::merge::{Conflict, merge_contacts};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::types::Json;
use uuid::Uuid;

/// The record of a merge.
#[derive(Debug, Clone, Serialize)]
pub struct MergeRecord {
    /// Id.
    pub id: Uuid,
    /// The contact that remains.
    pub survivor_id: Uuid,
    /// The contact folded into it (deleted).
    pub merged_id: Uuid,
    /// Fields both had with different values, and which value was kept.
    pub conflicts: Vec<Conflict>,
    /// What moved: event count, list ids.
    pub moved: Value,
    /// When.
    pub merged_at: DateTime<Utc>,
    /// When it was undone, if it was.
    pub undone_at: Option<DateTime<Utc>>,
    /// The survivor after the merge.
    pub contact: Option<Contact>,
}

#[derive(sqlx::FromRow)]
struct MergeRow {
    id: Uuid,
    survivor_id: Uuid,
    merged_id: Uuid,
    survivor_before: Json<Value>,
    merged_before: Json<Value>,
    conflicts: Json<Value>,
    moved: Json<Value>,
    merged_at: i64,
    undone_at: Option<i64>,
}

impl Store {
    /// Merges `other` into `survivor`: the survivor gets the union of fields (newest wins on a
    /// conflict, each conflict reported), `other`'s events and list memberships move over, and
    /// `other` is deleted. The record keeps both records as they were, so it can be undone.
    pub async fn merge_contacts(
        &self,
        survivor_id: Uuid,
        other_id: Uuid,
        now: DateTime<Utc>,
        source: &str,
    ) -> Result<MergeRecord, StoreError> {
        let mut tx = self.db().begin().await?;
        crate::ingest::lock_identities(&mut tx).await?;
        let record = merge_in(&mut tx, survivor_id, other_id, now, source, false).await?;
        tx.commit().await?;
        Ok(record)
    }

    /// Undoes a merge: both contacts return as they were before it, with their own events and
    /// list memberships. Changes made to the survivor after the merge are lost, so the merge is
    /// refused if the survivor changed since, unless `force`.
    pub async fn undo_merge(
        &self,
        merge_id: Uuid,
        force: bool,
        now: DateTime<Utc>,
    ) -> Result<MergeRecord, StoreError> {
        let mut tx = self.db().begin().await?;
        crate::ingest::lock_identities(&mut tx).await?;
        let row: MergeRow = tx
            .fetch_optional(
                "SELECT id, survivor_id, merged_id, survivor_before, merged_before, conflicts, moved, merged_at, undone_at FROM merges WHERE id = $1",
                args![merge_id],
            )
            .await?
            .ok_or(StoreError::NotFound)?;
        if row.undone_at.is_some() {
            return Err(StoreError::conflict(
                "merge_id",
                "this merge was already undone",
            ));
        }
        let current = get_in(&mut tx, row.survivor_id).await?.ok_or_else(|| {
            StoreError::conflict("survivor_id", "the surviving contact no longer exists")
        })?;
        if current.updated_at.timestamp_micros() > row.merged_at && !force {
            return Err(StoreError::conflict(
                "survivor_id",
                "the surviving contact changed after the merge; undoing would lose those changes (repeat with force to undo anyway)",
            ));
        }
        let survivor: Contact = serde_json::from_value(row.survivor_before.0)
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        let merged: Contact = serde_json::from_value(row.merged_before.0)
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        save(
            &mut tx,
            &Contact {
                email: survivor.email.clone(),
                ..survivor.clone()
            },
        )
        .await?;
        insert(&mut tx, &merged).await?;
        let ids: Vec<Uuid> =
            serde_json::from_value(row.moved.0["events"].clone()).unwrap_or_default();
        for chunk in ids.chunks(500) {
            let placeholders: Vec<String> =
                (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "UPDATE events SET contact_id = $1 WHERE id IN ({})",
                placeholders.join(",")
            );
            let mut a = args![merged.id];
            a.extend(chunk.iter().map(|u| (*u).into()));
            tx.execute(sqlx::AssertSqlSafe(sql), a).await?;
        }
        let lists: Vec<Uuid> =
            serde_json::from_value(row.moved.0["lists"].clone()).unwrap_or_default();
        for l in &lists {
            tx.execute(
                "UPDATE list_members SET contact_id = $1 WHERE contact_id = $2 AND list_id = $3",
                args![merged.id, survivor.id, *l],
            )
            .await?;
        }
        let identities: Vec<(String, String)> =
            serde_json::from_value(row.moved.0["identities"].clone()).unwrap_or_default();
        crate::ingest::restore_identities(&mut tx, &identities, merged.id).await?;
        tx.execute("DELETE FROM events WHERE contact_id = $1 AND type = 'contact.merged' AND occurred_at = $2", args![survivor.id, row.merged_at])
            .await?;
        tx.execute(
            "UPDATE merges SET undone_at = $2 WHERE id = $1",
            args![merge_id, now],
        )
        .await?;
        append(
            &mut tx,
            vec![NewEvent::new(
                survivor.id,
                "contact.merge_undone",
                now,
                "api",
                json!({"merge_id": merge_id, "restored_id": merged.id}),
            )],
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(MergeRecord {
            id: row.id,
            survivor_id: row.survivor_id,
            merged_id: row.merged_id,
            conflicts: serde_json::from_value(row.conflicts.0).unwrap_or_default(),
            moved: json!({"events": ids.len(), "lists": lists}),
            merged_at: from_micros(row.merged_at),
            undone_at: Some(now),
            contact: Some(survivor),
        })
    }
}

/// Merges `other` into `survivor` inside a transaction (see [`Store::merge_contacts`]). With
/// `prefer_survivor`, the survivor's values win every conflict whatever the update times: used
/// when an anonymous profile folds into a known contact, whose stage and fields must not be
/// replaced by the profile's defaults. The merged contact's identities (cookie and user ids)
/// move to the survivor and are listed in the record, so an undo moves them back.
pub(crate) async fn merge_in(
    tx: &mut Tx,
    survivor_id: Uuid,
    other_id: Uuid,
    now: DateTime<Utc>,
    source: &str,
    prefer_survivor: bool,
) -> Result<MergeRecord, StoreError> {
    if survivor_id == other_id {
        return Err(StoreError::invalid(
            "other_id",
            "same_contact",
            "a contact cannot be merged into itself",
        ));
    }
    let survivor = get_in(tx, survivor_id).await?.ok_or(StoreError::NotFound)?;
    let other = get_in(tx, other_id).await?.ok_or_else(|| {
        StoreError::invalid(
            "other_id",
            "unknown_contact",
            format!("no contact with id {other_id}"),
        )
    })?;
    let outcome = if prefer_survivor {
        let mut older = other.clone();
        older.updated_at = older.updated_at.min(survivor.updated_at);
        merge_contacts(&survivor, &older, now)
    } else {
        merge_contacts(&survivor, &other, now)
    };
    let identities = crate::ingest::move_identities(tx, other_id, survivor_id).await?;

    let moved_events: Vec<One<Uuid>> = tx
        .fetch_all(
            "SELECT id FROM events WHERE contact_id = $1",
            args![other_id],
        )
        .await?;
    let lists: Vec<One<Uuid>> = tx
        .fetch_all(
            "SELECT list_id FROM list_members WHERE contact_id = $1 AND list_id NOT IN (SELECT list_id FROM list_members WHERE contact_id = $2)",
            args![other_id, survivor_id],
        )
        .await?;
    tx.execute(
        "UPDATE events SET contact_id = $1 WHERE contact_id = $2",
        args![survivor_id, other_id],
    )
    .await?;
    tx.execute(
        "UPDATE list_members SET contact_id = $1 WHERE contact_id = $2 AND list_id NOT IN (SELECT list_id FROM list_members WHERE contact_id = $1)",
        args![survivor_id, other_id],
    )
    .await?;
    tx.execute(
        "DELETE FROM list_members WHERE contact_id = $1",
        args![other_id],
    )
    .await?;
    // The other's e-mail must be free before the survivor may take it.
    tx.execute("DELETE FROM contacts WHERE id = $1", args![other_id])
        .await?;
    save(tx, &outcome.contact).await?;

    let moved = json!({
        "events": moved_events.iter().map(|e| e.0).collect::<Vec<_>>(),
        "lists": lists.iter().map(|l| l.0).collect::<Vec<_>>(),
        "identities": identities,
    });
    let id = Uuid::now_v7();
    tx.execute(
        "INSERT INTO merges (id, survivor_id, merged_id, survivor_before, merged_before, conflicts, moved, merged_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
        args![
            id,
            survivor_id,
            other_id,
            serde_json::to_value(&survivor).unwrap_or_default(),
            serde_json::to_value(&other).unwrap_or_default(),
            serde_json::to_value(&outcome.conflicts).unwrap_or_default(),
            moved.clone(),
            now
        ],
    )
    .await?;
    append(
        tx,
        vec![NewEvent::new(survivor_id, "contact.merged", now, source, json!({"merge_id": id, "merged_id": other_id, "merged_email": other.email, "conflicts": outcome.conflicts}))],
        now,
    )
    .await?;
    Ok(MergeRecord {
        id,
        survivor_id,
        merged_id: other_id,
        conflicts: outcome.conflicts,
        moved: json!({"events": moved_events.len(), "lists": moved["lists"], "identities": moved["identities"]}),
        merged_at: now,
        undone_at: None,
        contact: Some(outcome.contact),
    })
}
