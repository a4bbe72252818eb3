// Runs once, when the data volume is first initialised (docker-entrypoint-initdb.d).
// Creates the application user that workers and the web GUI use (not root).
const user = process.env.ACTIVE_MLIP_DB_USERNAME;
const pwd = process.env.ACTIVE_MLIP_DB_PASSWORD;
const fwDb = process.env.ACTIVE_MLIP_FW_DB || "fireworks";
const storeDb = process.env.ACTIVE_MLIP_MONGO_DB || "active_mlip";
db.getSiblingDB("admin").createUser({
  user: user,
  pwd: pwd,
  roles: [
    { role: "readWrite", db: fwDb },
    { role: "readWrite", db: storeDb },
  ],
});
