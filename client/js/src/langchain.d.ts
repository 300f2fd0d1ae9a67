// Types of @knowd/client/langchain (src/langchain.js).
import type { DocumentInterface } from '@langchain/core/documents';
import { BaseRetriever, type BaseRetrieverInput } from '@langchain/core/retrievers';

import type { ClientOptions, KnowdClient, Retrieval } from './index.js';

export interface KnowdRetrieverInput extends BaseRetrieverInput, ClientOptions {
  /** A client to search with; otherwise one is made from the ClientOptions. */
  client?: KnowdClient;
  topK?: number;
  retrieval?: Retrieval;
}

export interface KnowdPassageMetadata extends Record<string, unknown> {
  documentId: string;
  passageId: string;
  index: number;
  score: number;
  ingestTimeUnix: number;
  validFromUnix: number;
  namespace: string;
}

export class KnowdRetriever extends BaseRetriever<KnowdPassageMetadata> {
  constructor(fields?: KnowdRetrieverInput);
  lc_namespace: string[];
  client: KnowdClient;
  namespace: string;
  topK: number;
  retrieval?: Retrieval;
  _getRelevantDocuments(query: string): Promise<DocumentInterface<KnowdPassageMetadata>[]>;
}
