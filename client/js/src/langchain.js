// A LangChain.js retriever over knowd's Search: knowd's passages as LangChain Documents.
import { Document } from '@langchain/core/documents';
import { BaseRetriever } from '@langchain/core/retrievers';

import { KnowdClient } from './index.js';

/** Retrieves knowd's passages for a query (its Search call) as Documents: `pageContent` is the
 * passage's text; `metadata` holds the document's own metadata, then `documentId`, `passageId`
 * ("<documentId>#<index>"), `index` (the passage's index in its document), `score` (BM25 for
 * lexical retrieval, cosine for dense, RRF for hybrid), `ingestTimeUnix`, `validFromUnix` and
 * `namespace` (these win over metadata keys of the same name).
 *
 * fields: client (a KnowdClient) or the KnowdClient options to make one (target, token, ...);
 * namespace, topK (0: the daemon's default), retrieval ("dense", "lexical", "hybrid"), and
 * BaseRetriever's own (callbacks, tags, metadata, verbose). */
export class KnowdRetriever extends BaseRetriever {
  static lc_name() {
    return 'KnowdRetriever';
  }

  lc_namespace = ['knowd', 'retrievers'];

  constructor(fields = {}) {
    super(fields);
    const { client, namespace, topK = 0, retrieval, ...clientOptions } = fields;
    this.client = client ?? new KnowdClient({ namespace, ...clientOptions });
    this.namespace = namespace ?? this.client.namespace;
    this.topK = topK;
    this.retrieval = retrieval;
  }

  async _getRelevantDocuments(query) {
    const { passages } = await this.client.search(query, {
      namespace: this.namespace,
      topK: this.topK,
      retrieval: this.retrieval,
    });
    return passages.map(
      (p) =>
        new Document({
          pageContent: p.text,
          metadata: {
            ...p.metadata,
            documentId: p.documentId,
            passageId: `${p.documentId}#${p.index}`,
            index: p.index,
            score: p.score,
            ingestTimeUnix: p.ingestTimeUnix,
            validFromUnix: p.validFromUnix,
            namespace: this.namespace,
          },
          id: `${p.documentId}#${p.index}`,
        }),
    );
  }
}
