package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/metrics"
	"github.com/refresherd/refresherd/refresh"
)

func runDaemon(args []string, env Env) int {
	fs := newFlags("run", "run [--config FILE] [--http-listen ADDR] [--database-url URL] [--log-format json|console] [--pidfile FILE] [--dry-run]", env)
	cfgPath := fs.String("config", "config.yaml", "configuration file")
	listen := fs.String("http-listen", "", "address for /metrics, /healthz, /readyz, /status (overrides http.listen)")
	dbURL := fs.String("database-url", "", "PostgreSQL URL (overrides $DATABASE_URL and database.url)")
	logFormat := fs.String("log-format", "", "log format: json or console (overrides log.format)")
	pidfile := fs.String("pidfile", "", "write the daemon's PID here (for 'refresherd signal')")
	dry := fs.Bool("dry-run", false, "print what start-up would change in the database (views to create or rebuild) and exit")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return errorf(env, ExitUsage, "run", "unexpected arguments: %v", fs.Args())
	}
	ov := config.Overrides{DatabaseURL: *dbURL, HTTPListen: *listen, LogFormat: *logFormat}
	cfg, err := loadConfig(*cfgPath, env, ov)
	if err != nil {
		return errorf(env, ExitUsage, "run", "%v", err)
	}
	poolCfg, sessionCfg, err := connConfigs(cfg)
	if err != nil {
		return errorf(env, ExitUsage, "run", "%v", err)
	}
	if *dry {
		if err := dryRun(cfg, poolCfg, env.Stdout); err != nil {
			return errorf(env, ExitFailure, "run", "%v", err)
		}
		return ExitOK
	}
	log, err := newLogger(cfg.Log, env)
	if err != nil {
		return errorf(env, ExitUsage, "run", "%v", err)
	}
	defer func() { _ = log.Sync() }()

	if *pidfile != "" {
		if err := os.WriteFile(*pidfile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			return errorf(env, ExitFailure, "run", "write pidfile: %v", err)
		}
		defer os.Remove(*pidfile)
	}
	reload := func() (*config.Config, error) { return loadConfig(*cfgPath, env, ov) }
	if err := serve(cfg, reload, poolCfg, sessionCfg, log, env); err != nil {
		log.Error("refresherd failed", zap.Error(err))
		return ExitFailure
	}
	return ExitOK
}

// loadConfig applies DATABASE_URL between the file and the flag.
func loadConfig(path string, env Env, ov config.Overrides) (*config.Config, error) {
	if ov.DatabaseURL == "" {
		ov.DatabaseURL = env.Getenv("DATABASE_URL")
	}
	return config.Load(path, env.Getenv, ov)
}

// connConfigs parses the URLs. Errors never echo the URL: it may hold a
// password.
func connConfigs(cfg *config.Config) (*pgxpool.Config, *pgx.ConnConfig, error) {
	poolCfg, err := pgxpool.ParseConfig(cfg.Database.URL)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: database.url: not a valid PostgreSQL URL or DSN", cfg.File)
	}
	// Refreshes + status writes + the health check, never more: a busy
	// database must not be flooded by its own summariser.
	poolCfg.MaxConns = int32(cfg.MaxConcurrentRefreshes) + 2
	tune(poolCfg.ConnConfig)
	// database.url may be a pooler such as PgBouncer in transaction mode,
	// which hands each transaction to any server connection: pgx's default
	// named prepared statements ("stmtcache_...") then collide or vanish.
	// Unnamed statements in one round trip work there and anywhere else. A
	// URL that chooses a mode itself keeps it (e.g. PgBouncer 1.21+ with
	// max_prepared_statements).
	if !choosesExecMode(cfg.Database.URL) {
		poolCfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	}
	sessionCfg, err := pgx.ParseConfig(cfg.Database.SessionURL())
	if err != nil {
		return nil, nil, fmt.Errorf("%s: database.direct_url: not a valid PostgreSQL URL or DSN", cfg.File)
	}
	tune(sessionCfg)
	return poolCfg, sessionCfg, nil
}

// choosesExecMode reports whether the URL sets default_query_exec_mode.
// pgx.ParseConfig consumes the parameter; pgconn leaves unknown ones in
// RuntimeParams, so parse again at that level to see it.
func choosesExecMode(url string) bool {
	c, err := pgconn.ParseConfig(url)
	if err != nil {
		return false // pgx.ParseConfig accepted it: cannot happen
	}
	_, ok := c.RuntimeParams["default_query_exec_mode"]
	return ok
}

func tune(c *pgx.ConnConfig) {
	if c.RuntimeParams["application_name"] == "" {
		c.RuntimeParams["application_name"] = "refresherd"
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 10 * time.Second
	}
	// On cancellation, ask the server to cancel the running statement (the
	// default only closes the socket, and the server may go on refreshing,
	// holding its lock, until it notices).
	c.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: 5 * time.Second}
	}
}

func newLogger(c config.Log, env Env) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.TimeKey = "ts"
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	encCfg.EncodeDuration = zapcore.StringDurationEncoder
	var enc zapcore.Encoder
	if c.Format == "console" {
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	core := zapcore.NewCore(enc, zapcore.AddSync(env.Stderr), level)
	return zap.New(core, zap.ErrorOutput(zapcore.AddSync(env.Stderr))), nil
}

// serve runs the daemon until SIGTERM/SIGINT.
func serve(cfg *config.Config, reload func() (*config.Config, error), poolCfg *pgxpool.Config, sessionCfg *pgx.ConnConfig, log *zap.Logger, env Env) error {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	// The pool connects lazily: a database that is down at start-up is
	// waited for (and reported), not a crash loop.
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return fmt.Errorf("create connection pool: %w", err)
	}
	defer pool.Close()

	m := metrics.New(env.Version)
	m.ConfigReloadTime.SetToCurrentTime()
	host, _ := os.Hostname()
	eng := refresh.New(cfg, pool, sessionCfg, m, log, refresh.Options{Identity: fmt.Sprintf("%s/%d", host, os.Getpid())})
	srv, err := metrics.Listen(cfg.HTTP.Listen, m, metrics.Handlers{
		Ready:  eng.Ready,
		Status: func() any { return eng.Status() },
	}, log.Named("http"))
	if err != nil {
		return err
	}
	names := make([]string, len(cfg.Views))
	for i, v := range cfg.Views {
		names[i] = v.Name.String()
	}
	log.Info("refresherd starting",
		zap.String("version", env.Version),
		zap.String("config", cfg.File),
		zap.Strings("views", names),
		zap.String("database", describeDB(poolCfg.ConnConfig)),
		zap.String("http", srv.Addr()),
	)

	// HTTP outlives the engine: probes and metrics answer during the
	// shutdown grace period.
	httpCtx, stopHTTP := context.WithCancel(context.Background())
	defer stopHTTP()
	httpErr := make(chan error, 1)
	go func() { httpErr <- srv.Run(httpCtx) }()
	engDone := make(chan error, 1)
	go func() { engDone <- eng.Run(ctx) }()

	var runErr error
loop:
	for {
		select {
		case s := <-sigs:
			switch s {
			case syscall.SIGUSR1:
				log.Info("SIGUSR1: refreshing every view now")
				eng.RefreshAll()
			case syscall.SIGHUP:
				reloadConfig(eng, reload, m, log)
			default:
				log.Info("stopping", zap.String("signal", s.String()))
				stop()
			}
		case err := <-httpErr:
			httpErr = nil // stopped: never selected again
			if err != nil {
				runErr = err
				stop()
			}
		case err := <-engDone:
			if err != nil && runErr == nil {
				runErr = err
			}
			break loop
		}
	}
	stopHTTP()
	if httpErr != nil {
		if err := <-httpErr; err != nil {
			log.Warn("http shutdown", zap.Error(err))
		}
	}
	if runErr == nil {
		log.Info("stopped cleanly")
	}
	return runErr
}

// reloadConfig re-reads the configuration; a bad one is logged and counted
// and the running one stays.
func reloadConfig(eng *refresh.Engine, reload func() (*config.Config, error), m *metrics.Metrics, log *zap.Logger) {
	log.Info("SIGHUP: reloading the configuration")
	cfg, err := reload()
	if err == nil {
		_, err = eng.Reload(cfg)
	}
	if err != nil {
		m.ConfigReloadOK.Set(0)
		log.Error("configuration reload failed; the running configuration stays", zap.Error(err))
		return
	}
	m.ConfigReloadOK.Set(1)
	m.ConfigReloadTime.SetToCurrentTime()
}

// describeDB names the database without credentials.
func describeDB(c *pgx.ConnConfig) string {
	return fmt.Sprintf("%s@%s:%d/%s", c.User, c.Host, c.Port, c.Database)
}
