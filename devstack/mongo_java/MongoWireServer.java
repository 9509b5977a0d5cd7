import de.bwaldvogel.mongo.MongoBackend;
import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.MongoDatabase;
import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.backend.CollectionOptions;
import de.bwaldvogel.mongo.backend.CursorRegistry;
import de.bwaldvogel.mongo.backend.Index;
import de.bwaldvogel.mongo.backend.QueryResult;
import de.bwaldvogel.mongo.backend.h2.H2Backend;
import de.bwaldvogel.mongo.backend.h2.H2Collection;
import de.bwaldvogel.mongo.backend.h2.H2Database;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;
import de.bwaldvogel.mongo.bson.Document;
import java.net.InetSocketAddress;
import org.h2.mvstore.MVMap;
import org.h2.mvstore.MVStore;

/**
 * devstack's MongoDB-wire server: mongo-java-server on a loopback port.
 *
 * <p>Usage: MongoWireServer HOST PORT [DATA_FILE]. With a data file the H2 MVStore backend
 * keeps the data across restarts (the store-outage tests stop and start the server);
 * without one, everything lives in memory.
 *
 * <p>Three changes bring its costs nearer to MongoDB's, where mongo-java-server's would
 * otherwise decide what a benchmark on devstack measures:
 *
 * <ul>
 *   <li>Many event-loop threads, where netty's default is two per core. The server runs each
 *       command on the loop of its connection, and a command waiting for a collection's lock
 *       (a long scan holds it) stalls every other connection of that loop, pymongo's monitor
 *       included, which then gives up on the server. MongoDB serves each connection on its
 *       own thread. MONGO_WIRE_THREADS sets the number (default 64).
 *   <li>A query with an equality on {@code _id} beside other conditions (the ledger's fenced
 *       writes: {@code {_id, token, status}}) reads that one document through the {@code _id}
 *       index, as MongoDB's planner does. mongo-java-server uses an index only when the query
 *       has exactly the index's fields, so each such write scanned the whole collection.
 *   <li>A page cache of 256 MB (MONGO_WIRE_CACHE_MB), MongoDB's smallest WiredTiger cache,
 *       where H2's default is 16 MB: a million recipients' chunks are about 16 MB, and every
 *       scan of them (a claim, the run's totals) read and deserialized them from the file.
 * </ul>
 */
public final class MongoWireServer {
  public static void main(String[] args) throws Exception {
    if (args.length < 2) {
      System.err.println("usage: MongoWireServer HOST PORT [DATA_FILE]");
      System.exit(2);
    }
    MongoBackend backend = args.length > 2 ? new IdPlannedH2Backend(args[2]) : new MemoryBackend();
    MongoServer server = new MongoServer(backend);
    String threads = System.getenv().getOrDefault("MONGO_WIRE_THREADS", "64");
    server.bind(
        new InetSocketAddress(args[0], Integer.parseInt(args[1])), 1, Integer.parseInt(threads));
    // SIGTERM: close connections and flush the data file before the JVM exits.
    Runtime.getRuntime().addShutdownHook(new Thread(server::shutdown));
    System.out.println("mongo-wire-server listening on " + args[0] + ":" + args[1]);
    Thread.currentThread().join();
  }

  /** H2Backend whose collections use the _id index for an _id equality among others. */
  static final class IdPlannedH2Backend extends H2Backend {
    IdPlannedH2Backend(String file) {
      super(
          new MVStore.Builder()
              .fileName(file)
              .cacheSize(
                  Integer.parseInt(System.getenv().getOrDefault("MONGO_WIRE_CACHE_MB", "256")))
              .open());
    }

    @Override
    protected MongoDatabase openOrCreateDatabase(String name) {
      return new IdPlannedH2Database(name, getMvStore(), getCursorRegistry());
    }
  }

  static final class IdPlannedH2Database extends H2Database {
    // One store per process. Not an instance field: H2Database's constructor opens the
    // collections already in the file, before a subclass's fields are assigned.
    private static MVStore store;

    IdPlannedH2Database(String name, MVStore mvStore, CursorRegistry cursors) {
      super(name, remember(mvStore), cursors);
    }

    private static MVStore remember(MVStore mvStore) {
      store = mvStore;
      return mvStore;
    }

    @Override
    protected MongoCollection<Object> openOrCreateCollection(
        String name, CollectionOptions options) {
      // The maps H2Database itself opens for a collection (mongo-java-server 1.47.0).
      String namespace = getFullCollectionNamespace(name);
      MVMap<Object, Document> data = store.openMap("databases." + namespace);
      MVMap<String, Object> meta = store.openMap("meta." + namespace);
      return new IdPlannedH2Collection(this, name, options, data, meta, cursorRegistry);
    }
  }

  static final class IdPlannedH2Collection extends H2Collection {
    IdPlannedH2Collection(
        MongoDatabase database,
        String name,
        CollectionOptions options,
        MVMap<Object, Document> data,
        MVMap<String, Object> meta,
        CursorRegistry cursors) {
      super(database, name, options, data, meta, cursors);
    }

    @Override
    protected QueryResult queryDocuments(
        Document query, Document orderBy, int skip, int limit, int batchSize, Document fields) {
      Object id = query.get("_id");
      if (query.size() > 1 && (id instanceof String || id instanceof Number)) {
        Document byId = new Document("_id", id);
        for (Index<Object> index : getIndexes()) {
          if (index.canHandle(byId)) {
            return matchDocuments(
                query, index.getPositions(byId), orderBy, skip, limit, batchSize, fields);
          }
        }
      }
      return super.queryDocuments(query, orderBy, skip, limit, batchSize, fields);
    }
  }
}
