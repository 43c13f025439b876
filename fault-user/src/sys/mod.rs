pub mod rtnl;
