// Package sql holds refresherd's own database objects as embedded SQL.
package sql

import _ "embed"

// Schema creates the refresherd schema, status tables and functions.
//
//go:embed schema.sql
var Schema string

// Names of refresherd's objects that the Go code refers to.
const (
	SchemaName     = "refresherd"
	NotifyChannel  = "refresherd_changes"
	TriggerName    = "refresherd_notify"
	NotifyFunction = "notify_change"
	// DoorbellOp is the op of the notify trigger's notification (see
	// notify_change() in schema.sql): drain the change log.
	DoorbellOp = "doorbell"
)
