//! Static lists: a trade show, an import, a hand-picked set of contacts.

use crate::db::{Tx, Val, from_micros};
use crate::{Store, StoreError, args, on_unique};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// A static list.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct List {
    /// Id.
    pub id: Uuid,
    /// Unique name, e.g. `Trade show 2026-10`.
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
    /// Number of members.
    pub member_count: i64,
    /// Created.
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct ListRow {
    id: Uuid,
    name: String,
    description: Option<String>,
    member_count: i64,
    created_at: i64,
}

impl From<ListRow> for List {
    fn from(r: ListRow) -> Self {
        List {
            id: r.id,
            name: r.name,
            description: r.description,
            member_count: r.member_count,
            created_at: from_micros(r.created_at),
        }
    }
}

const SELECT: &str = "SELECT l.id, l.name, l.description, (SELECT COUNT(*) FROM list_members m WHERE m.list_id = l.id) AS member_count, l.created_at FROM lists l";

/// The list with this name, created if missing. Returns its id.
pub async fn ensure(tx: &mut Tx, name: &str, now: DateTime<Utc>) -> Result<Uuid, StoreError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(StoreError::invalid(
            "list",
            "invalid_name",
            "a list name must be 1 to 200 characters",
        ));
    }
    if let Some(id) = tx
        .fetch_optional::<crate::db::One<Uuid>>("SELECT id FROM lists WHERE name = $1", args![name])
        .await?
    {
        return Ok(id.0);
    }
    let id = Uuid::now_v7();
    tx.execute(
        "INSERT INTO lists (id, name, description, created_at) VALUES ($1, $2, NULL, $3)",
        args![id, name, now],
    )
    .await?;
    Ok(id)
}

/// `list.added` / `list.removed` events for contacts (the engine re-checks segments that read
/// list membership when it sees them).
fn membership_events(
    kind: &str,
    list_id: Uuid,
    contacts: &[Uuid],
    now: DateTime<Utc>,
) -> Vec<crate::events::NewEvent> {
    contacts
        .iter()
        .map(|c| {
            crate::events::NewEvent::new(
                *c,
                kind,
                now,
                "kizuna",
                serde_json::json!({"list_id": list_id}),
            )
        })
        .collect()
}

/// Adds contacts to a list (already-members are left as they are); each new member gets a
/// `list.added` event.
pub async fn add_members(
    tx: &mut Tx,
    list_id: Uuid,
    contact_ids: &[Uuid],
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let mut added = 0;
    for chunk in contact_ids.chunks(1000) {
        let mut sql =
            String::from("INSERT INTO list_members (contact_id, list_id, added_at) VALUES ");
        let mut a: Vec<Val> = Vec::with_capacity(chunk.len() * 3);
        for (i, c) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${},${},${})",
                a.len() + 1,
                a.len() + 2,
                a.len() + 3
            ));
            a.extend(args![*c, list_id, now]);
        }
        sql.push_str(" ON CONFLICT (contact_id, list_id) DO NOTHING RETURNING contact_id");
        let new: Vec<crate::db::One<Uuid>> = tx.fetch_all(sqlx::AssertSqlSafe(sql), a).await?;
        let new: Vec<Uuid> = new.into_iter().map(|r| r.0).collect();
        added += new.len() as u64;
        crate::events::append(tx, membership_events("list.added", list_id, &new, now), now).await?;
    }
    Ok(added)
}

impl Store {
    /// Creates a list.
    pub async fn create_list(
        &self,
        name: &str,
        description: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<List, StoreError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(StoreError::invalid(
                "name",
                "invalid_name",
                "a list name must be 1 to 200 characters",
            ));
        }
        let id = Uuid::now_v7();
        let mut tx = self.db().begin().await?;
        tx.execute(
            "INSERT INTO lists (id, name, description, created_at) VALUES ($1, $2, $3, $4)",
            args![id, name, description, now],
        )
        .await
        .map_err(|e| {
            on_unique(e, "name", || {
                format!("a list named {name:?} already exists")
            })
        })?;
        tx.commit().await?;
        self.list(id).await
    }

    /// A list by id.
    pub async fn list(&self, id: Uuid) -> Result<List, StoreError> {
        let sql = format!("{SELECT} WHERE l.id = $1");
        let r: Option<ListRow> = self
            .db()
            .reader()
            .fetch_optional(sqlx::AssertSqlSafe(sql), args![id])
            .await?;
        r.map(List::from).ok_or(StoreError::NotFound)
    }

    /// A list by name.
    pub async fn list_by_name(&self, name: &str) -> Result<Option<List>, StoreError> {
        let sql = format!("{SELECT} WHERE l.name = $1");
        let r: Option<ListRow> = self
            .db()
            .reader()
            .fetch_optional(sqlx::AssertSqlSafe(sql), args![name])
            .await?;
        Ok(r.map(List::from))
    }

    /// Every list, by name.
    pub async fn lists(&self) -> Result<Vec<List>, StoreError> {
        let sql = format!("{SELECT} ORDER BY l.name");
        let rows: Vec<ListRow> = self
            .db()
            .reader()
            .fetch_all(sqlx::AssertSqlSafe(sql), vec![])
            .await?;
        Ok(rows.into_iter().map(List::from).collect())
    }

    /// Adds contacts to a list; unknown contact ids are an error naming the id.
    pub async fn add_to_list(
        &self,
        list_id: Uuid,
        contact_ids: &[Uuid],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.db().begin().await?;
        if tx
            .fetch_optional::<crate::db::One<Uuid>>(
                "SELECT id FROM lists WHERE id = $1",
                args![list_id],
            )
            .await?
            .is_none()
        {
            return Err(StoreError::NotFound);
        }
        for (i, c) in contact_ids.iter().enumerate() {
            if tx
                .fetch_optional::<crate::db::One<Uuid>>(
                    "SELECT id FROM contacts WHERE id = $1",
                    args![*c],
                )
                .await?
                .is_none()
            {
                return Err(StoreError::invalid(
                    format!("contact_ids[{i}]"),
                    "unknown_contact",
                    format!("no contact with id {c}"),
                ));
            }
        }
        let n = add_members(&mut tx, list_id, contact_ids, now).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Removes a contact from a list (a `list.removed` event records it).
    pub async fn remove_from_list(
        &self,
        list_id: Uuid,
        contact_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.db().begin().await?;
        let n = tx
            .execute(
                "DELETE FROM list_members WHERE list_id = $1 AND contact_id = $2",
                args![list_id, contact_id],
            )
            .await?;
        if n > 0 {
            crate::events::append(
                &mut tx,
                membership_events("list.removed", list_id, &[contact_id], now),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Deletes a list (its contacts stay).
    pub async fn delete_list(&self, id: Uuid, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut tx = self.db().begin().await?;
        let members: Vec<crate::db::One<Uuid>> = tx
            .fetch_all(
                "SELECT contact_id FROM list_members WHERE list_id = $1",
                args![id],
            )
            .await?;
        let members: Vec<Uuid> = members.into_iter().map(|r| r.0).collect();
        crate::events::append(
            &mut tx,
            membership_events("list.removed", id, &members, now),
            now,
        )
        .await?;
        tx.execute("DELETE FROM list_members WHERE list_id = $1", args![id])
            .await?;
        if tx
            .execute("DELETE FROM lists WHERE id = $1", args![id])
            .await?
            == 0
        {
            return Err(StoreError::NotFound);
        }
        tx.commit().await
    }
}
