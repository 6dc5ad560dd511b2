#![allow(clippy::todo, unused)]
use futures_util::future::BoxFuture;
use std::time::Duration;
pub struct TenantGrant {
    pub vhost: String,
    pub exchange: String,
    pub routing_key: String,
}
#[derive(Debug, thiserror::Error)]
#[error("x")]
pub struct BrokerUserError;
pub trait BrokerUsers: Send + Sync {
    fn ensure_user<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
        grant: &'a TenantGrant,
    ) -> BoxFuture<'a, Result<(), BrokerUserError>>;
    fn delete_user<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<(), BrokerUserError>>;
    fn users_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, BrokerUserError>>;
}
pub struct ManagementApi;
impl ManagementApi {
    pub fn new(management_url: &str, timeout: Duration) -> Result<Self, BrokerUserError> {
        todo!()
    }
}
impl BrokerUsers for ManagementApi {
    fn ensure_user<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
        grant: &'a TenantGrant,
    ) -> BoxFuture<'a, Result<(), BrokerUserError>> {
        todo!()
    }
    fn delete_user<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<(), BrokerUserError>> {
        todo!()
    }
    fn users_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, BrokerUserError>> {
        todo!()
    }
}
pub fn vhost_of(amqp_url: &str) -> Result<String, BrokerUserError> {
    todo!()
}
pub fn tenant_amqp_url(
    admin_amqp_url: &str,
    user: &str,
    password: &str,
) -> Result<String, BrokerUserError> {
    todo!()
}
pub fn user_name(tenant: &str, id: &str) -> String {
    todo!()
}
