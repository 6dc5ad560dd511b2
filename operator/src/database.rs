#![allow(clippy::todo, unused)]
use uuid::Uuid;
pub struct TenantDb;
pub struct Claimant {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}
pub enum TenantClaim {
    Ours,
    Taken(Claimant),
}
pub struct RepositoryClaims {
    pub owned: Vec<Uuid>,
    pub taken: Vec<Uuid>,
}
#[derive(Debug, thiserror::Error)]
#[error("x")]
pub struct DbError;
impl TenantDb {
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        todo!()
    }
    pub async fn claim_tenant(&self, tenant: &str, who: &Claimant) -> Result<TenantClaim, DbError> {
        todo!()
    }
    pub async fn claim_repositories(
        &self,
        tenant: &str,
        repos: &[Uuid],
    ) -> Result<RepositoryClaims, DbError> {
        todo!()
    }
    pub async fn ensure_login(
        &self,
        tenant: &str,
        login: &str,
        password: &str,
    ) -> Result<(), DbError> {
        todo!()
    }
    pub async fn logins(&self, tenant: &str) -> Result<Vec<String>, DbError> {
        todo!()
    }
    pub async fn drop_login(&self, login: &str) -> Result<(), DbError> {
        todo!()
    }
    pub async fn release_tenant(&self, tenant: &str, uid: &str) -> Result<(), DbError> {
        todo!()
    }
}
pub fn login_name(tenant: &str, id: &str) -> String {
    todo!()
}
pub fn tenant_database_url(
    owner_url: &str,
    login: &str,
    password: &str,
) -> Result<String, DbError> {
    todo!()
}
pub fn mint_password() -> Result<String, DbError> {
    todo!()
}
