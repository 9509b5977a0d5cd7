import de.bwaldvogel.mongo.MongoBackend;
import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.backend.h2.H2Backend;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;

/**
 * devstack's MongoDB-wire server: mongo-java-server on a loopback port.
 *
 * <p>Usage: MongoWireServer HOST PORT [DATA_FILE]. With a data file the H2 MVStore backend
 * keeps the data across restarts (the store-outage tests stop and start the server);
 * without one, everything lives in memory.
 */
public final class MongoWireServer {
  public static void main(String[] args) throws Exception {
    if (args.length < 2) {
      System.err.println("usage: MongoWireServer HOST PORT [DATA_FILE]");
      System.exit(2);
    }
    MongoBackend backend = args.length > 2 ? new H2Backend(args[2]) : new MemoryBackend();
    MongoServer server = new MongoServer(backend);
    server.bind(args[0], Integer.parseInt(args[1]));
    // SIGTERM: close connections and flush the data file before the JVM exits.
    Runtime.getRuntime().addShutdownHook(new Thread(server::shutdown));
    System.out.println("mongo-wire-server listening on " + args[0] + ":" + args[1]);
    Thread.currentThread().join();
  }
}
